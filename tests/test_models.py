import pytest
import torch

from sciexplain import models


def test_materialize_local_dir_roundtrip(tiny_base, tmp_path):
    info = models.materialize_base(str(tiny_base), tmp_path / "base")
    assert info["source"] == f"local:{tiny_base}" and info["dtype"] == "float32" and info["parameters"] > 1000
    a = models.load_causal_lm(tiny_base)
    b = models.load_causal_lm(tmp_path / "base")
    ids = torch.tensor([[1, 5, 9, 30]])
    assert torch.equal(a(ids).logits, b(ids).logits)
    tok = models.load_tokenizer(tmp_path / "base")
    assert tok.padding_side == "left" and tok.pad_token_id != tok.eos_token_id and tok.chat_template


def test_pad_token_made_distinct_from_eos(tiny_base):
    tok = models.load_tokenizer(tiny_base)
    tok.pad_token = tok.eos_token
    models._fix_pad_token(tok)
    assert tok.pad_token == "<|endoftext|>"


def test_seq_classifier_scores_last_real_token(tiny_base):
    tok = models.load_tokenizer(tiny_base, padding_side="right")
    rm = models.load_seq_classifier(tiny_base, tokenizer=tok)
    text = "Why is the sky blue?<|im_end|>"
    one = rm(**tok([text], return_tensors="pt")).logits
    batch = rm(**tok([text, text + " more words here"], return_tensors="pt", padding=True)).logits
    assert torch.allclose(one[0], batch[0], atol=1e-5)


def test_4bit_switch_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert models.use_4bit("auto") is False and models.use_4bit(False) is False
    with pytest.raises(models.ModelSourceError, match="needs CUDA"):
        models.use_4bit("true")
    with pytest.raises(models.ModelSourceError, match="auto, true or false"):
        models.use_4bit("maybe")
    assert models.compute_dtype() == torch.float32


def test_resolve_source(tmp_path):
    emb = models.resolve_source("embedded")
    assert emb["kind"] == "gguf" and emb["gguf_file"].endswith(".gguf")
    assert models.resolve_source("meta-llama/Llama-2-7b-chat-hf", "abc123")["label"] == "hub:meta-llama/Llama-2-7b-chat-hf@abc123"
    assert models.resolve_source(str(tmp_path))["kind"] == "local"
    with pytest.raises(models.ModelSourceError, match="not 'embedded'"):
        models.resolve_source("no/such/thing/here")


def test_missing_model_dir_is_clear(tmp_path):
    with pytest.raises(models.ModelSourceError, match="run the stage that builds it"):
        models.load_causal_lm(tmp_path / "nope")


@pytest.mark.slow
def test_embedded_gguf_materialises(tmp_path):
    info = models.materialize_base("embedded", tmp_path / "base")
    assert info["parameters"] == 134_515_008 and info["pad_token"] == "<|endoftext|>"
    tok = models.load_tokenizer(tmp_path / "base")
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                              add_generation_prompt=True, tokenize=False)
