"""How many answers decode together: on a GPU as many as its free memory holds, up to the largest batch measured.

A row of the static-cache loop holds its KV cache (every layer's keys and values for its prompt and answer) and its
sampling work (a few float32 copies of the vocabulary's scores); the weights and their dequantized copy are shared.
"""

from __future__ import annotations

CPU_BATCH = 48  # each step's fixed cost still outweighs the rows' own here (48 answers: 140 s at 48, 200 s at 16)
# The largest batch measured: 26,758 tokens/s at 1,024 rows of 512 new tokens on an H200, 4.1x the 512 rows of the
# loop before (BENCHMARKS.md, "Notebook 06 at its real size"); larger batches have not been tried.
GPU_MAX_BATCH = 1024
# Cards under SMALL_CARD_BYTES (a T4's 15 GB) keep the 64 rows they decoded before the batch came from memory: held
# to 15 GB on an H200, the planned ~350 rows failed while recording the decoding step's CUDA graph (an allocation
# the limit refused inside the recording, which the out-of-memory fallback cannot catch). By the estimate in
# BENCHMARKS.md a T4 would decode about 1.8x the tokens/s at 350 rows: what this costs until that is fixed.
SMALL_CARD_BYTES = 24 * 2**30
SMALL_CARD_BATCH = 64
# Bytes per vocabulary entry and row while sampling: the logits, float32 scores, probabilities, noise, their ratio,
# the masks, and the sort's values and indices where top_p's candidates fall short.
SAMPLING_BYTES_PER_ENTRY = 40
HEADROOM_BYTES = 2 * 2**30  # for the activations of a step and the allocator's fragmentation
COPY_KEEP_FREE_BYTES = 2 * 2**30  # the dequantized copy is made only where it leaves this much free


def default_batch_size(model, tokens_per_row: int | None = None) -> int:
    """Rows per batch: CPU_BATCH on CPU; on a GPU the rows whose cache and sampling fit in its free memory (after
    the dequantized weights dense_weights.dequantized_weights makes), at most GPU_MAX_BATCH (SMALL_CARD_BATCH on a
    card the size of a T4), at least 1."""
    if model.device.type != "cuda":
        return CPU_BATCH
    most = SMALL_CARD_BATCH if usable_gpu_bytes() < SMALL_CARD_BYTES else GPU_MAX_BATCH
    return max(1, min(most, rows_that_fit(model, tokens_per_row or 1024)))


def rows_that_fit(model, tokens_per_row: int) -> int:
    """Rows of `tokens_per_row` cache slots whose cache and sampling fit in the GPU memory left after the
    dequantized copy (where it is made) and HEADROOM_BYTES."""
    free = available_gpu_bytes() - (dequantized_copy_bytes(model) if copy_fits(model) else 0) - HEADROOM_BYTES
    return free // row_bytes(model.config, tokens_per_row, model.get_input_embeddings().weight.element_size())


def row_bytes(config, tokens: int, element_size: int) -> int:
    """GPU memory one row of a batch needs: its KV cache for `tokens` slots and its sampling work."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * element_size * tokens
    return cache + SAMPLING_BYTES_PER_ENTRY * config.vocab_size


def available_gpu_bytes() -> int:
    """Bytes this process may still allocate: the device's free memory plus what PyTorch holds unused, within the
    share torch.cuda.set_per_process_memory_fraction allows (a T4's 15 GB simulated on a larger card)."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    return int(min(free + reserved - allocated, usable_gpu_bytes() - allocated))


def usable_gpu_bytes() -> int:
    """The card's memory, or the share of it this process is held to."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    fraction = torch.cuda.get_per_process_memory_fraction() if hasattr(torch.cuda, "get_per_process_memory_fraction") else 1.0
    return int(fraction * total)


def dequantized_copy_bytes(model) -> int:
    """What dense_weights.dequantized_weights adds while decoding (0 without 4-bit layers)."""
    from .lora import stored_param_count
    from .models import four_bit_layers

    return sum(stored_param_count(m.weight) * m.weight.quant_state.dtype.itemsize for m in four_bit_layers(model))


def copy_fits(model) -> bool:
    """dense_weights.dequantized_weights makes its copy: 4-bit layers on CPU, or on a GPU with room to spare."""
    from .models import four_bit_layers

    layers = four_bit_layers(model)
    if not layers:
        return False
    on_gpu = layers[0].weight.device.type == "cuda"
    return not on_gpu or available_gpu_bytes() - dequantized_copy_bytes(model) >= COPY_KEEP_FREE_BYTES
