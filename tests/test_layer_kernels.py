"""The fused decoder layers (layer_kernels, fused_layers) against transformers' own code, run by Triton's interpreter
on the CPU. fp16 and fp32 here: the interpreter rounds to bf16 by truncation, so bf16 is checked on a GPU
(tests/gpu/test_decoding.py), where the kernels give torch's bits for rotary and SiLU x up."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":  # conftest.py turns it on where there is no CUDA GPU
    pytest.skip("the GPU suite runs the fused layers compiled (tests/gpu)", allow_module_level=True)
pytest.importorskip("triton")

from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, apply_rotary_pos_emb  # noqa: E402

from semifinetune import layer_kernels  # noqa: E402
from semifinetune.fused_layers import fused_layers, fusable  # noqa: E402

DTYPES = (torch.float16, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_and_the_residual_add_give_transformers_values(dtype):
    generator = torch.Generator().manual_seed(0)
    x, residual = (torch.randn(2, 3, 96, generator=generator).mul(3).to(dtype) for _ in range(2))
    norm = Qwen2RMSNorm(96, eps=1e-6).to(dtype)
    norm.weight.data = torch.randn(96, generator=generator).to(dtype)
    normed, summed = layer_kernels.rms_norm(x, norm.weight, norm.variance_epsilon, residual=residual)
    assert torch.equal(summed, residual + x)
    # the interpreter's rsqrt is numpy's, not torch's: the normalised value may part in its last bit, and the
    # weight's product rounds once more (a GPU gives torch's bits)
    assert within_last_bits(normed, norm(residual + x))
    assert within_last_bits(layer_kernels.rms_norm(x, norm.weight, norm.variance_epsilon), norm(x))
    norm.float()  # a float32 weight over 16-bit states (as prepare_model_for_kbit_training leaves norms): float32 out
    if dtype != torch.float32:
        expected = norm(x)
        assert expected.dtype == torch.float32 and within_last_bits(layer_kernels.rms_norm(x, norm.weight, 1e-6), expected)


def within_last_bits(got, expected):
    ulp = torch.finfo(got.dtype).eps * expected.detach().abs().clamp(min=torch.finfo(got.dtype).tiny)
    return got.dtype == expected.dtype and bool(((got - expected.detach()).abs() <= 4 * ulp).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_gives_transformers_bits_for_one_token_and_for_a_prompt(dtype):
    generator = torch.Generator().manual_seed(1)
    for tokens in (1, 5):
        # as the attention layers hold them: (B, T, heads, D) viewed as (B, heads, T, D)
        q = torch.randn(3, tokens, 6, 16, generator=generator).to(dtype).transpose(1, 2)
        k = torch.randn(3, tokens, 2, 16, generator=generator).to(dtype).transpose(1, 2)
        cos, sin = (torch.randn(3, tokens, 16, generator=generator).to(dtype) for _ in range(2))
        expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
        got_q, got_k = layer_kernels.rotary(q, k, cos, sin)
        assert torch.equal(got_q, expected_q) and torch.equal(got_k, expected_k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_into_the_cache_writes_what_the_static_caches_update_writes(dtype):
    """A decoding step's q, k and v as slices of one merged projection output: q rotated as rotary gives it, and the
    rotated k and v written at the slot the position tensor holds, as StaticLayer.update's index_copy_ writes them;
    every other slot left as it was."""
    generator = torch.Generator().manual_seed(3)
    rows, heads, key_heads, dim, slots, slot = 3, 6, 2, 16, 10, 7
    merged = torch.randn(rows, 1, (heads + 2 * key_heads) * dim, generator=generator).to(dtype)
    q, k, v = (t.view(rows, 1, -1, dim).transpose(1, 2) for t in merged.split([heads * dim, key_heads * dim,
                                                                               key_heads * dim], -1))
    cos, sin = (torch.randn(rows, 1, dim, generator=generator).to(dtype) for _ in range(2))
    keys, values = (torch.randn(rows, key_heads, slots, dim, generator=generator).to(dtype) for _ in range(2))
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    expected_keys, expected_values = keys.clone(), values.clone()
    position = torch.tensor([slot])
    expected_keys.index_copy_(2, position, expected_k)
    expected_values.index_copy_(2, position, v)
    got_q = layer_kernels.rotary_into_cache(q, k, v, cos, sin, keys, values, position)
    assert torch.equal(got_q, expected_q)
    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_times_up_agrees_to_the_last_bit_of_exp(dtype):
    """The interpreter's exp is numpy's, torch's CPU SiLU uses its own: they may part in the last bit (a GPU gives
    torch's bits)."""
    generator = torch.Generator().manual_seed(2)
    gate, up = (torch.randn(4, 3000, generator=generator).mul(4).to(dtype) for _ in range(2))
    expected = torch.nn.functional.silu(gate) * up
    got = layer_kernels.silu_mul(gate, up)
    assert within_last_bits(got, expected)


def _tiny_llama(tokenizer):
    """A random Llama (the cpu profile's SmolLM2 layout) of the tiny model's size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        pad_token_id=tokenizer.pad_token_id)).eval()


@pytest.mark.parametrize("one_kernel", [False, True])
@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_the_fused_layers_give_the_models_logits_and_leave_it_as_it_was(tiny, architecture, one_kernel, monkeypatch):
    """The tiny Qwen2 model and a Llama of its size (float32) over a prompt: the same logits with and without the
    fused layers, each norm three kernels (as here) or one (as on a GPU where torch's order is known); the layers'
    own forward again after the block."""
    model, tokenizer = tiny
    if architecture == "llama":
        model = _tiny_llama(tokenizer)
    assert fusable(model)
    if one_kernel:
        monkeypatch.setattr(layer_kernels, "_order", lambda x: True)
    ids = tokenizer(["Who founded TSMC?", "What is EUV lithography?"], return_tensors="pt", padding=True)
    given = []  # per norm: whether the layer before handed it the squares of its output, or its pending sum
    norm = layer_kernels.rms_norm
    monkeypatch.setattr(layer_kernels, "rms_norm", lambda *args, **kwargs: given.append(
        kwargs.get("summed_out") is not None if one_kernel else kwargs.get("squares") is not None)
        or norm(*args, **kwargs))
    with torch.inference_mode():
        expected = model(**ids).logits
        with fused_layers(model) as fused:
            got = model(**ids).logits
    assert fused and torch.allclose(got, expected, rtol=0, atol=1e-5)
    layers = model.config.num_hidden_layers  # the first layer's first norm adds nothing; every later first norm does
    assert given == [False] + [False, True] * (layers - 1) + [False, True]
    assert "forward" not in vars(model.model.layers[0]) and "forward" not in vars(model.model.norm)
    with fused_layers(model, enabled=False) as fused:
        assert not fused and "forward" not in vars(model.model.layers[0])


def test_a_layer_of_another_kind_keeps_the_models_own_layers(tiny):
    """A model with a layer _layer_forward does not reproduce (here: another activation) is left as it is."""
    llama = _tiny_llama(tiny[1])
    llama.model.layers[1].mlp.act_fn = torch.nn.GELU()
    with fused_layers(llama) as fused:
        assert not fused and "forward" not in vars(llama.model.layers[0])


@pytest.mark.parametrize("one_kernel", [False, True])
def test_the_decoding_loop_through_the_fused_layers_gives_generates_greedy_tokens(tiny, one_kernel, monkeypatch):
    """The loop as a GPU runs it (fused layers and the attention kernel on; each norm three kernels, or one with the
    layers' last adds left to it), its prefill and steps: token for token what generate() gives."""
    from semifinetune import attention_kernel, decode

    if one_kernel:
        monkeypatch.setattr(layer_kernels, "_order", lambda x: True)

    monkeypatch.setattr(decode, "kernels_usable", lambda device: True)
    attended = []
    attend = attention_kernel.attend
    monkeypatch.setattr(attention_kernel, "attend",
                        lambda *args, **kwargs: attended.append(1) or attend(*args, **kwargs))
    monkeypatch.setattr(decode, "SAMPLE_KERNEL_ROWS", 10**9)  # torch's draw: this checks the layers
    used = []
    original = decode.fused_layers
    monkeypatch.setattr(decode, "fused_layers", lambda model, enabled: used.append(enabled) or original(model, enabled))
    lengths = set()
    next_logits = decode.StaticDecoder._next_logits
    monkeypatch.setattr(decode.StaticDecoder, "_next_logits", lambda self, length: lengths.add(
        "total" if length == self.total else length) or next_logits(self, length))
    cached = []
    into_cache = layer_kernels.rotary_into_cache
    monkeypatch.setattr(layer_kernels, "rotary_into_cache", lambda *args: cached.append(1) or into_cache(*args))
    model, tokenizer = tiny
    tokenizer.padding_side = "left"
    encoded = tokenizer(["Who founded TSMC?", "CUDA?", "What is a wafer?"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        expected = model.generate(**encoded, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                                  pad_token_id=tokenizer.pad_token_id)[:, encoded["input_ids"].shape[1]:]
        got = decode.static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.0] * 3, [1.0] * 3, 12,
                                   [-1], tokenizer.pad_token_id, cuda_graph=False)
    assert used == [True] and got.tolist() == expected.tolist()
    assert len(attended) == 11 * tiny[0].config.num_hidden_layers  # every step after the prefill, every layer
    assert lengths == {"total"}  # every step over the whole cache: the kernel stops at the step's own slot
    assert len(cached) == len(attended)  # each step's keys and values written by rotary's kernel


def test_rows_repeating_a_prompt_attend_to_its_first_rows_copy_of_it(tiny, monkeypatch):
    """A sampled batch of 3 prompts x 4 rows through the fused loop: every row reads its prompt's slots from the
    first row holding that prompt. The other rows' copies are overwritten with NaN after the prefill, and the loop
    still samples what it samples from intact copies."""
    from semifinetune import decode

    monkeypatch.setattr(decode, "kernels_usable", lambda device: True)
    monkeypatch.setattr(decode, "SAMPLE_KERNEL_ROWS", 10**9)  # torch's draw, one seed
    model, tokenizer = tiny
    tokenizer.padding_side = "left"
    encoded = tokenizer(["Who founded TSMC?", "CUDA?", "What is a wafer?"] * 4, return_tensors="pt", padding=True)
    prompt_len = encoded["input_ids"].shape[1]
    prefill = decode.StaticDecoder._prefill

    def spoiled(decoder, *args):
        logits = prefill(decoder, *args)
        source = decoder.prompt_source
        assert source.tolist() == [0, 1, 2] * 4 and decoder.shared_prompt.item() == prompt_len
        for layer in decoder.cache.layers:
            for cache in (layer.keys, layer.values):
                cache[3:, :, :prompt_len] = float("nan")
        return logits

    def run():
        torch.manual_seed(5)
        with torch.inference_mode():
            return decode.static_decode(model, encoded["input_ids"], encoded["attention_mask"], [0.7] * 12, [0.9] * 12,
                                        10, [-1], tokenizer.pad_token_id, cuda_graph=False).tolist()

    intact = run()
    monkeypatch.setattr(decode.StaticDecoder, "_prefill", spoiled)
    assert run() == intact


def test_merged_projections_give_the_separate_ones_logits(tiny):
    """The tiny model with 4-bit q/k/v, gate and up layers, inside dequantized_weights: through the fused layers each
    group is one matmul over one matrix (the slices fed to rotary and SiLU x up as they lie), with the logits of
    transformers' layers calling each projection; the modules are as they were after the block."""
    import copy

    bnb = pytest.importorskip("bitsandbytes")

    from semifinetune.dense_weights import MERGED, dequantized_weights

    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    torch.manual_seed(0)
    for layer in model.model.layers:
        for module, name in ((layer.self_attn, "q_proj"), (layer.self_attn, "k_proj"), (layer.self_attn, "v_proj"),
                             (layer.mlp, "gate_proj"), (layer.mlp, "up_proj")):
            dense = getattr(module, name)
            four_bit = bnb.nn.Linear4bit(dense.in_features, dense.out_features, bias=dense.bias is not None,
                                         compute_dtype=torch.float32, quant_type="nf4")
            four_bit.support_avx512bf16_for_cpu = False  # float32 on every CPU (see tests/test_decode.py)
            four_bit.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
            if dense.bias is not None:
                # the tiny model's biases start at zero; these check that the merged matmul adds each one's own
                four_bit.bias = torch.nn.Parameter(torch.randn_like(dense.bias), requires_grad=False)
            setattr(module, name, four_bit.to("cpu"))
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    ids = tokenizer(["Who founded TSMC?", "What is EUV lithography?"], return_tensors="pt", padding=True)
    merged_calls = []
    with torch.inference_mode(), dequantized_weights(model) as copies:
        separate = model(**ids).logits
        for module in (attention, mlp):
            forward, sizes = getattr(module, MERGED)
            setattr(module, MERGED, (lambda x, f=forward: merged_calls.append(1) or f(x), sizes))
        assert copies[0][2]._base is copies[1][2]._base  # q's and k's copies are views of one matrix
        with fused_layers(model) as fused:
            merged = model(**ids).logits
    assert fused and len(merged_calls) == 2
    assert torch.allclose(merged, separate, rtol=0, atol=1e-5)
    assert not any(hasattr(m, MERGED) for m in model.modules())


def cuda_mean_of_squares(x, halves: bool):
    """torch's CUDA mean of x's float32 squares over its last dimension, step by step as ATen's reduction kernel
    takes it from 16 rows: lane l of 32 keeps 4 running sums over the 4-vectors l, l + 32, ...; adds them in turn;
    the warp adds its lanes' sums by shuffles down, offsets 16 to 1 (halves) or 1 to 16; the sum times rows /
    (rows x width)."""
    import numpy as np

    squares = np.square(x.numpy().astype(np.float32))
    rows, width = squares.shape
    factor = np.float32(rows) / np.float32(rows * width)
    means = []
    for row in squares:
        lanes = []
        for lane in range(32):
            sums = [np.float32(0)] * 4
            vector = lane
            while vector * 4 + 3 < width:
                sums = [np.float32(s + row[vector * 4 + i]) for i, s in enumerate(sums)]
                vector += 32
            lanes.append(np.float32(np.float32(np.float32(sums[0] + sums[1]) + sums[2]) + sums[3]))
        for offset in (16, 8, 4, 2, 1) if halves else (1, 2, 4, 8, 16):
            lanes = [np.float32(v + lanes[lane + offset]) if lane + offset < 32 else v for lane, v in enumerate(lanes)]
        means.append(np.float32(lanes[0] * factor))
    return torch.tensor(np.array(means, dtype=np.float32))


@pytest.mark.parametrize("halves", [True, False])
@pytest.mark.parametrize("width", [1536, 200])
def test_the_one_kernel_norm_adds_its_squares_in_torchs_cuda_order(halves, width):
    """The mean of squares bit for bit as torch's CUDA reduction adds them (each lane's share, then the warp's tree
    of either order), including a width whose last lanes hold fewer values; the norm and the sum as transformers'."""
    generator = torch.Generator().manual_seed(1)
    x, residual = (torch.randn(16, width, generator=generator).mul(3).to(torch.float16) for _ in range(2))
    norm = Qwen2RMSNorm(width, eps=1e-6).to(torch.float16)
    norm.weight.data = torch.randn(width, generator=generator).to(torch.float16)
    normed, summed, mean = layer_kernels._one_kernel_norm(x, norm.weight, norm.variance_epsilon, residual, halves)
    assert torch.equal(summed, residual + x)
    assert torch.equal(mean, cuda_mean_of_squares(summed.float(), halves))
    assert not torch.equal(mean, cuda_mean_of_squares(summed.float(), not halves))  # the two orders part here
    assert within_last_bits(normed, norm(residual + x))
    plain, same, _ = layer_kernels._one_kernel_norm(x, norm.weight, norm.variance_epsilon, None, halves)
    assert same.data_ptr() == x.data_ptr() and within_last_bits(plain, norm(x))


def test_the_norm_is_one_kernel_only_where_torchs_order_is_known():
    """The interpreter's CPU tensors, and fewer than 16 rows anywhere, keep the three kernels around torch's mean."""
    assert not layer_kernels.norm_in_one_kernel(torch.zeros(822, 1, 1536))
