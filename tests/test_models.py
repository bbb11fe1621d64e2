import time

import pytest
import torch

from semifinetune.config import ConfigError, make_config
from semifinetune.models import (
    R1_ASSISTANT,
    R1_BOS,
    R1_EOS,
    ModelLoadError,
    check_hub_reachable,
    embedded_model_dir,
    load_model,
    r1_distill_config,
)


def test_tiny_model_has_r1_specials_and_template(tiny):
    model, tokenizer = tiny
    assert (tokenizer.bos_token, tokenizer.eos_token) == (R1_BOS, R1_EOS)
    assert tokenizer.pad_token not in (None, tokenizer.eos_token)
    for token in ("<｜User｜>", R1_ASSISTANT, "<think>", "</think>", R1_EOS):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "R</think>A"}], tokenize=False
    )
    assert text == f"{R1_BOS}<｜User｜>Q{R1_ASSISTANT}A{R1_EOS}"  # reasoning dropped, as the real template does
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Q"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith(f"{R1_ASSISTANT}<think>\n")


def test_tiny_model_generates(tiny):
    model, tokenizer = tiny
    ids = tokenizer("TSMC is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_tiny_model_is_the_same_every_build(tiny):
    model, _ = tiny
    again, _ = load_model(make_config("tiny"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_embedded_model_loads_from_the_wheel_then_the_cache():
    model, tokenizer = load_model(make_config("cpu"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    cached = embedded_model_dir() / "model.safetensors"
    converted_at = cached.stat().st_mtime
    load_model(make_config("cpu"))
    assert cached.stat().st_mtime == converted_at  # the second load reads the cache, converts nothing
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids["input_ids"].shape[1] :])  # real pretrained knowledge


def test_decoding_keeps_spaces_and_warns_nothing():
    """The embedded tokenizer (BPE, its GGUF asks for space clean-up) decodes text as it was, and a fresh process's
    first decode prints no transformers warning about clean_up_tokenization_spaces."""
    import subprocess
    import sys

    code = ("from semifinetune.config import make_config\nfrom semifinetune.models import load_tokenizer\n"
            "t = load_tokenizer(make_config('cpu'))\nprint(repr(t.decode(t('Hello , world . ')['input_ids'])))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == repr("Hello , world . ")
    assert "clean_up_tokenization_spaces" not in result.stderr, result.stderr


def test_r1_architecture_parameter_count():
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(r1_distill_config())
    assert sum(p.numel() for p in model.parameters()) == 1_777_088_000


def test_4bit_without_cuda_fails_before_loading():
    with pytest.raises(ConfigError, match="load_in_4bit=True needs a CUDA GPU.*profile 'cpu'"):
        load_model(make_config("t4"))


def test_hub_model_without_hub_access_fails_fast_naming_the_cpu_profile(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="profile 'cpu'"):
        check_hub_reachable("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelLoadError, match="profile 'cpu'"):
        check_hub_reachable("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit")
    assert time.perf_counter() - start < 10


def test_unsloth_backend_where_not_installed_is_a_clear_error():
    with pytest.raises(ConfigError, match="Unsloth is not installed"):
        load_model(make_config("tiny", {"backend": "unsloth"}))
