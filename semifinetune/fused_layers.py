"""Decoder layers that run their norms, rotary embedding and SiLU x up as Triton kernels (layer_kernels).

Inside `fused_layers(model)` each Qwen2 or Llama decoder layer's forward is shadowed by `_layer_forward`: the same
steps as transformers' Qwen2DecoderLayer, Qwen2Attention and Qwen2MLP forwards (its projections, cache update and
attention function are the model's own modules and interface), with rotary one kernel for q and k (in a decoding
step also writing the keys and values into the static cache, in place of the cache's update), SiLU(gate) x up
one, and each RMSNorm one where layer_kernels finds torch's order for its mean, else three; the residual adds
are folded into the norms after them (the one after attention into the second norm, the layer's last into the
next layer's first norm or the final one). Where
dense_weights merged a layer's q, k and v copies (and its gate and up ones) into one matrix, each group is one matmul
whose slices the kernels read where they lie. The model's final norm runs through layer_kernels too. Every value
is transformers' own, bit for bit on a GPU. The decoding loop (decode.StaticDecoder) records these in its CUDA
graphs: a step of R1-1.5B launches 1,262 kernels through transformers' layers, 303 through these with the merged
matmuls and the attention kernel.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

LAYERS = {"Qwen2DecoderLayer", "LlamaDecoderLayer"}  # the layouts _layer_forward reproduces
SQUARES = "rms_squares"  # a layer's output holds its float32 squares here, for the norm that reads it next
PENDING = "pending_sum"  # or the (down projection, residual) whose sum that norm writes into it


def fusable(model) -> bool:
    """Every decoder layer of `model` is one _layer_forward reproduces: a Qwen2 or Llama layer with SiLU."""
    layers = _decoder_layers(model)
    return bool(layers) and all(type(layer).__name__ in LAYERS and type(layer.mlp.act_fn).__name__ == "SiLUActivation"
                                for layer in layers)


@contextmanager
def fused_layers(model, enabled: bool = True):
    """Inside the block the decoder layers and the final norm of `model` run through layer_kernels (where `enabled`
    and fusable); the block's value says whether they do."""
    if not (enabled and fusable(model)):
        yield False
        return
    shadowed = [(layer, functools.partial(_layer_forward, layer)) for layer in _decoder_layers(model)]
    final_norm = _base(model).norm
    shadowed.append((final_norm, functools.partial(_norm_forward, final_norm)))
    for module, forward in shadowed:
        module.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield True
    finally:
        for module, _ in shadowed:
            del module.forward


def causal_lm(model):
    """The transformers causal LM under peft's wrappers."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _base(model):
    """The transformers model holding `layers` and `norm`, under peft's and the causal-LM wrappers."""
    base = causal_lm(model)
    return getattr(base, "model", base)


def _decoder_layers(model):
    return list(getattr(_base(model), "layers", []))


def _norm_forward(norm, hidden_states):
    """An RMSNorm of a layer's output through layer_kernels: where the output's sum is pending (_layer_output), the
    norm's kernel adds it up, writes it into the output and normalises it."""
    from .layer_kernels import rms_norm

    pending = getattr(hidden_states, PENDING, None)
    if pending is None:
        return rms_norm(hidden_states, norm.weight, norm.variance_epsilon, squares=getattr(hidden_states, SQUARES, None))
    delattr(hidden_states, PENDING)
    down, residual = pending
    return rms_norm(down, norm.weight, norm.variance_epsilon, residual=residual, summed_out=hidden_states)[0]


def _layer_forward(layer, hidden_states, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                   position_embeddings=None, **kwargs):
    """Qwen2DecoderLayer.forward (Llama's is the same) through the fused kernels."""
    from .layer_kernels import rms_norm, silu_mul

    normed = _norm_forward(layer.input_layernorm, hidden_states)
    attended = _attention(layer.self_attn, normed, position_embeddings, attention_mask, past_key_values, **kwargs)
    norm = layer.post_attention_layernorm
    normed, residual = rms_norm(attended, norm.weight, norm.variance_epsilon, residual=hidden_states)
    mlp = layer.mlp
    gate, up = _projections(mlp, normed, ("gate_proj", "up_proj"))
    return _layer_output(mlp.down_proj(silu_mul(gate, up)), residual)


def _layer_output(down, residual):
    """The layer's output, residual + down, as the next norm reads it. Where that norm is one kernel, the sum is
    left pending: the output is an empty tensor that the next layer's first norm, or the final one, fills as it
    normalises it (nothing reads a layer's output before the norm after it). That is one launch fewer a layer,
    though at 822 rows on an H200 the step took as long either way (BENCHMARKS.md). Else the add runs now with the
    float32 squares the next norm starts from."""
    import torch

    from .layer_kernels import add_squared, norm_in_one_kernel

    if norm_in_one_kernel(down):
        out = torch.empty_like(down)
        setattr(out, PENDING, (down, residual))
        return out
    out, squares = add_squared(down, residual)
    setattr(out, SQUARES, squares)
    return out


def _projections(module, hidden_states, names):
    """The module's projections `names` of hidden_states: one matmul where dense_weights merged them, else each its
    own module's."""
    from .dense_weights import MERGED

    merged = getattr(module, MERGED, None)
    if merged is not None:
        forward, sizes = merged
        return forward(hidden_states).split(sizes, -1)
    return [getattr(module, name)(hidden_states) for name in names]


def _attention(attention, hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs):
    """Qwen2Attention.forward (and Llama's) with rotary as layer_kernels.rotary; the attention output projected."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.qwen2.modeling_qwen2 import eager_attention_forward

    from .layer_kernels import rotary, rotary_into_cache

    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, attention.head_dim)
    query, key, value = (p.view(hidden_shape).transpose(1, 2)
                         for p in _projections(attention, hidden_states, ("q_proj", "k_proj", "v_proj")))
    layer = _static_step_layer(past_key_values, attention.layer_idx, query, kwargs.get("cache_position"))
    if layer is not None:  # a decoding step: k and v written into the cache by rotary's kernel, the update skipped
        query = rotary_into_cache(query, key, value, *position_embeddings, layer.keys, layer.values,
                                  kwargs["cache_position"])
        key, value = layer.keys, layer.values
    else:
        query, key = rotary(query, key, *position_embeddings)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, attention.layer_idx)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    if hasattr(attention, "sliding_window"):  # Qwen2 passes it; Llama has none
        kwargs["sliding_window"] = attention.sliding_window
    output, _ = interface(attention, query, key, value, attention_mask, dropout=0.0, scaling=attention.scaling, **kwargs)
    return attention.o_proj(output.reshape(*input_shape, -1).contiguous())


def _static_step_layer(cache, index: int, query, cache_position):
    """The StaticLayer a decoding step (one query a row, its slot a one-element cache_position) writes to, for
    rotary_into_cache to write there as StaticLayer.update would; else None. (The update writes at the layer's
    counter, which the decoding loop sets to cache_position before each step.)"""
    if cache is None or query.shape[2] != 1 or cache_position is None or cache_position.numel() != 1:
        return None
    layer = cache.layers[index] if index < len(getattr(cache, "layers", ())) else None
    if type(layer).__name__ != "StaticLayer" or not layer.is_initialized:
        return None
    return layer
