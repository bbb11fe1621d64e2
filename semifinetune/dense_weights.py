"""4-bit layers computing from a dense 16-bit copy of their weight while decoding, the LoRA adapter folded in.

For a few rows (a decoding step) bitsandbytes computes from the packed weight in a fused 4-bit kernel; the copy holds
the same weight values for a dense matmul, 1.2x faster for the sweep on an H200 (BENCHMARKS.md), and the folded
adapter saves each layer's two small matmuls, casts and copies. The copies of a layer's q, k and v projections are
one matrix, and those of its gate and up projections another, so that fused_layers runs each group as one matmul.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

# Projections of one module that read the same input, computed as one matmul by fused_layers: an attention's, an MLP's
MERGED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
MERGED = "merged_projections"  # the attribute that holds (forward, output sizes) on such a module inside the block


@contextmanager
def dequantized_weights(model):
    """Inside the block, every bitsandbytes 4-bit layer computes from a dequantized copy of its weight, with the LoRA
    adapters that apply now folded in (W + scaling * B @ A, rounded once to the compute dtype).

    Other kernels round differently: results agree to bf16 rounding, not bit for bit (the GPU suite measures how
    closely: the copy is no farther than the 4-bit kernel from the same matmuls in fp32). The adapters' state is read
    on entry: the block must not span a switch such as peft's disable_adapter(). It costs 2.6 GB of GPU memory for
    R1-1.5B while sampling, and is skipped where it would leave too little free (batch_plan.copy_fits).

    Where every projection of a MERGED_GROUPS group has a copy, the copies are views into one matrix (no more memory)
    and the module holds the group's forward in its MERGED attribute: each output of that one matmul is the
    projection's own, bit for bit on an H100 (BENCHMARKS.md), as the GPU suite's fused-layer tests check.
    The value of the block: a list of (module whose forward is shadowed, its 4-bit layer, the copy); empty where no
    copy was made.
    """
    from .batch_plan import copy_fits
    from .models import four_bit_layers

    if not copy_fits(model):
        yield []
        return
    wrappers = {id(m.base_layer): m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    copies = []
    for layer in four_bit_layers(model):
        # in the dtype the layer computes in: no cast per call (a pre-quantized checkpoint stores bf16 state)
        weight = dequantize_layer(layer)
        dtype = layer.compute_dtype or layer.weight.quant_state.dtype
        wrapper = wrappers.get(id(layer))
        delta = None if wrapper is None else _adapter_delta(wrapper)
        shadowed = layer if delta is None else wrapper
        weight = (weight.float() + delta).to(dtype) if delta is not None else weight.to(dtype)
        copies.append((shadowed, layer, weight))
    merged = _merge(model, copies)
    for shadowed, layer, weight in copies:
        shadowed.forward = functools.partial(_dense_forward, layer, weight)  # shadows the class's forward
    try:
        yield copies
    finally:
        for shadowed, _, _ in copies:
            del shadowed.forward
        for module in merged:
            delattr(module, MERGED)


def _merge(model, copies: list) -> list:
    """Each MERGED_GROUPS group whose projections all have copies of one dtype, with all or none biased, gets one
    matrix: the copies in `copies` become views into it and the group's module its MERGED attribute. Returns those
    modules."""
    import torch

    at = {id(shadowed): i for i, (shadowed, _, _) in enumerate(copies)}
    merged = []
    for module in model.modules():
        for names in MERGED_GROUPS:
            indices = [at.get(id(getattr(module, name, None))) for name in names]
            if None in indices:
                continue
            layers = [copies[i][1] for i in indices]
            weights = [copies[i][2] for i in indices]
            kinds = [(w.dtype, layer.compute_dtype, layer.bias is not None) for w, layer in zip(weights, layers)]
            if len(set(kinds)) > 1:
                continue
            weight = torch.cat(weights)
            sizes = [w.shape[0] for w in weights]
            start = 0
            for i, size in zip(indices, sizes):  # narrow, not split: a caller may write into its view
                copies[i] = (*copies[i][:2], weight.narrow(0, start, size))
                start += size
            bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
            setattr(module, MERGED, (functools.partial(_linear, layers[0].compute_dtype, weight, bias), sizes))
            merged.append(module)
    return merged


def dequantize_layer(layer):
    """The weight a bitsandbytes Linear4bit computes with, dense, in whichever layout the layer holds it now."""
    from bitsandbytes.functional import dequantize_4bit

    state = layer.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        return _unpack_cpu_layout(layer.weight.data, state)
    return dequantize_4bit(layer.weight.data, state)


def _unpack_cpu_layout(data, state):
    """Dense float32 weight from the layout bitsandbytes 0.50 moves a 4-bit weight into on a CPU with AVX512-BF16,
    at the layer's first forward in eval mode (functional._convert_weight_packed_for_cpu, for its bf16 kernel).

    That layout interleaves the 4-bit codes in blocks of 32 rows and holds absmax transposed, as bf16;
    dequantize_4bit reads it as the ordinary layout and returns other weights (off by whole units). Undone here
    exactly: the same codes times the same bf16 absmax the kernel multiplies by.
    """
    import torch

    rows, cols = state.shape
    # Every 32 bytes hold 64 codes: 32 rows x 2 neighbouring columns, the first 32 in the low halves, the rest high.
    packed = data.view(torch.uint8).reshape(-1, 32)
    codes = torch.cat([packed & 0xF, packed >> 4], dim=-1)
    codes = codes.reshape(rows // 32, cols // 2, 32, 2).transpose(1, 2).reshape(rows, cols)
    scale = state.absmax.float().T.repeat_interleave(state.blocksize, dim=1)  # [K / blocksize, N] -> [N, K]
    return state.code.float()[codes.long()] * scale


def _adapter_delta(wrapper):
    """scaling * B @ A (float32) summed over the adapters a peft LoRA layer applies now, or None where it applies none
    or one that folding would change (DoRA and other variants, a LoRA bias, dropout while training)."""
    if wrapper.disable_adapters or wrapper.merged or wrapper.training:
        return None
    active = [name for name in wrapper.active_adapters if name in wrapper.lora_A]
    if not active or any(name in getattr(wrapper, "lora_variant", {}) for name in active):
        return None
    if any(getattr(wrapper.lora_B[name], "bias", None) is not None for name in active):
        return None
    return sum(wrapper.scaling[name] * (wrapper.lora_B[name].weight.float() @ wrapper.lora_A[name].weight.float())
               for name in active)


def _dense_forward(layer, weight, x):
    """bitsandbytes Linear4bit.forward with the weight already dequantized."""
    return _linear(layer.compute_dtype, weight, layer.bias, x)


def _linear(compute_dtype, weight, bias, x):
    """x @ weight.T + bias in `compute_dtype` (the input's where None), returned in the input's dtype."""
    import torch

    input_dtype = x.dtype
    if compute_dtype is not None:
        x = x.to(compute_dtype)
    bias = None if bias is None else bias.to(x.dtype)
    return torch.nn.functional.linear(x, weight.to(x.dtype), bias).to(input_dtype)
