"""Shared fixtures: tiny random Llama models with a tiny byte-level BPE tokenizer, built offline in the test."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Why is the sky blue? Sunlight scatters off molecules in the air; blue light scatters most.",
    "Photosynthesis converts light energy, water and carbon dioxide into sugar and oxygen.",
    "In summary, the mechanism is Rayleigh scattering, which is stronger at short wavelengths.",
    "An atom has a nucleus of protons and neutrons, surrounded by electrons.",
    "Plate tectonics explains earthquakes, volcanoes and the drift of the continents.",
    "Stars fuse hydrogen into helium in their cores, releasing energy as light.",
    "For example, ice floats because solid water is less dense than liquid water.",
    "Evolution by natural selection acts on heritable variation within populations.",
] * 4


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2, kv_heads: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=kv_heads,
                      max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.3,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_base(path: Path, seed: int = 0, **model_kw) -> Path:
    tok = make_tiny_tokenizer()
    model = make_tiny_model(tok, seed=seed, **model_kw)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.padding_side = "left"
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A saved tiny random Llama chat model (~30k parameters) + tokenizer, like models/base."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_base_4bit(tmp_path_factory) -> Path:
    """``tiny_base`` with every linear layer 64 or 128 wide (hidden 64, MLP 128, 4 KV heads of 16), for the NF4 tests.

    bitsandbytes 0.50 takes another CPU path on CPUs with avx512_bf16 (AMX Xeons, AMD Zen 4+): an eval-mode
    Linear4bit forward repacks its weight (``functional._convert_weight_packed_for_cpu``), reshaping the absmax to
    ``(out, in // blocksize)`` with blocksize 64 and needing ``out % 32 == 0``. On ``tiny_base``'s 32-wide layers that
    is ``(32, 0)`` ("shape '[32, 0]' is invalid for input of size 16"); with widths that are multiples of 64 the
    4-bit tests run, and pass, on every CPU, with or without that path (as real models' layers are)."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny4bit") / "base", hidden=64, kv_heads=4)


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """A scratch project folder: cwd, with data/raw and params.yaml copied from the repo."""
    shutil.copytree(ROOT / "data" / "raw", tmp_path / "data" / "raw")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(path: Path, updates: dict) -> None:
    """Deep-update a params.yaml in place."""
    import yaml

    params = yaml.safe_load(path.read_text())

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(params, updates)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread_per_test_process():
    """Every in-process test on one torch thread: the tiny models' matrices are too small to gain from a second
    thread, and on a busy 2-core machine two threads oversubscribe (test_sft + test_local_backend: 81 s on the
    default 2 threads, 16 s on one). What the tests assert does not depend on it; the stages they start as
    subprocesses are given OMP_NUM_THREADS=1 where it matters."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _start_the_tiny_dvc_repro_early(request, tmp_path_factory):
    """When tests/test_dvc_repro.py is selected, its tiny `dvc repro` (three minutes of stage processes, one at a
    time) starts at the session's first test, on the second core, instead of when that module is reached."""
    if not any(item.path.name == "test_dvc_repro.py" for item in request.session.items):
        yield
        return
    import test_dvc_repro

    early = test_dvc_repro.start_early(tmp_path_factory, request.getfixturevalue("tiny_base"))
    try:
        yield
    finally:
        early.close()


@pytest.fixture()
def one_torch_thread():
    """Tiny models on a shared 2-core machine: 2 torch threads are ~50x slower than 1 (oversubscription)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cache_lines(path: Path) -> list[dict]:
    """The records of a response cache file (JSONL), a torn last line left out; [] when there is none."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line
            pass
    return out


class WordCountScorer:
    """Stands in for sciexplain.reward.RewardScorer where the model does not matter: reward = words / 100."""

    def __init__(self, *a, **k):
        pass

    def score(self, questions, answers, batch_size=1, progress=False):
        return [len(a.split()) / 100 for a in answers]
