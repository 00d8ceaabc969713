import pytest
import torch

from sciexplain import models


def test_materialize_local_dir_roundtrip(tiny_base, tmp_path):
    info = models.materialize_base(str(tiny_base), tmp_path / "base")
    assert info["source"] == "local" and info["label"] == f"local:{tiny_base}" and info["dtype"] == "float32" and info["parameters"] > 1000
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


def test_4bit_switch_on_cpu(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert models.use_4bit("auto") is False and models.use_4bit(False) is False
    # bitsandbytes 0.50's CPU backend holds NF4 weights: `true` works on the CPU (auto stays CUDA-only)
    assert models.cpu_4bit_support() is None and models.use_4bit("true") is True
    monkeypatch.setattr(models, "cpu_4bit_support", lambda: "bitsandbytes cannot be imported (ImportError: x)")
    with pytest.raises(models.ModelSourceError, match="no CUDA GPU and 4-bit NF4 on the CPU is not available: "
                                                      "bitsandbytes cannot be imported"):
        models.use_4bit("true")
    with pytest.raises(models.ModelSourceError, match="auto, true or false"):
        models.use_4bit("maybe")
    assert models.compute_dtype() == torch.float32


# --------------------------------------------------------------------------- placement (kwargs logic)

@pytest.fixture()
def fake_cuda(monkeypatch):
    """Pretend to be a machine with 2 bf16-capable GPUs (only the kwargs logic runs; nothing is loaded)."""
    monkeypatch.setattr(models, "has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_placement_cpu(monkeypatch):
    monkeypatch.setattr(models, "has_cuda", lambda: False)
    assert models._quant_kwargs("auto") == {"dtype": torch.float32}  # fp32, on the CPU, no device_map
    assert models._quant_kwargs(False) == {"dtype": torch.float32}
    assert models.training_init_kwargs("auto") == {"dtype": "float32", "use_cache": False}
    assert models.training_quantization_config("auto") is None


def test_placement_cuda_without_4bit_goes_to_the_gpu_in_bf16(fake_cuda):
    assert models._quant_kwargs(False) == {"dtype": torch.bfloat16, "device_map": {"": "cuda:0"}}
    assert models.training_init_kwargs(False) == {"dtype": "bfloat16", "use_cache": False}  # no device_map: TRL's
    assert models.training_quantization_config(False) is None
    # an explicit CPU load (adapter merging for export) stays fp32 on the CPU
    assert models._inference_kwargs(False, "cpu") == {"dtype": torch.float32}


def test_placement_cuda_4bit(fake_cuda):
    kw = models._quant_kwargs("auto")
    assert kw["dtype"] == torch.bfloat16 and kw["device_map"] == {"": "cuda:0"}
    q = kw["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16 and q.bnb_4bit_quant_storage == torch.bfloat16  # FSDP+QLoRA
    tq = models.training_quantization_config("auto")
    assert tq.load_in_4bit and tq.bnb_4bit_quant_storage == torch.bfloat16
    assert "device_map" not in models.training_init_kwargs("auto")
    assert models._inference_kwargs("auto", "cpu") == {"dtype": torch.float32}  # never 4-bit for merging


def test_placement_under_accelerate_launch(fake_cuda):
    """WORLD_SIZE > 1: scoring/generation models go to the rank's own GPU; training loads carry no device_map
    (device_map=None: accelerate places / shards the model, bitsandbytes uses the GPU accelerate made current)."""
    import trl.trainer.utils as tu

    fake_cuda.setenv("WORLD_SIZE", "2")
    fake_cuda.setenv("RANK", "1")
    fake_cuda.setenv("LOCAL_RANK", "1")
    assert models.is_distributed()
    assert models._quant_kwargs(False)["device_map"] == {"": "cuda:1"}
    assert models._quant_kwargs("auto")["device_map"] == {"": "cuda:1"}
    assert "device_map" not in models.training_init_kwargs("auto")

    seen, current = {}, []
    fake_cuda.setattr(tu, "create_model_from_path", lambda path, arch=None, **kw: seen.update(kw) or "model")
    fake_cuda.setattr(torch.cuda, "set_device", current.append)
    assert models.trl_load("models/base", "auto") == "model"
    assert seen["device_map"] is None and seen["dtype"] == "bfloat16"
    assert current == ["cuda:1"]  # this rank's GPU is current before bitsandbytes places the 4-bit weights
    assert seen["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    fake_cuda.setenv("WORLD_SIZE", "1")  # one process: TRL's own rule (None on the CPU, "auto" on one GPU)
    seen.clear()
    models.trl_load("models/base", False)
    assert "device_map" not in seen and "quantization_config" not in seen


def test_trainable_policy_leaves_loading_to_the_trainer(tiny_base, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, cfg = models.load_trainable_policy(tiny_base, None, {"r": 4, "alpha": 8, "dropout": 0.0})
    assert model == str(tiny_base) and isinstance(cfg, LoraConfig) and cfg.r == 4
    get_peft_model(models.load_causal_lm(tiny_base), models.lora_config(r=4, alpha=8)).save_pretrained(tmp_path / "a")
    model, cfg = models.load_trainable_policy(tiny_base, tmp_path / "a")
    assert cfg is None and isinstance(model, PeftModel) and not model.config.use_cache
    assert next(model.parameters()).dtype == torch.float32 and model.device.type == "cpu"
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


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
