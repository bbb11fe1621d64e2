"""Sampling with a temperature and top_p per row, and a decoding loop over a static KV cache.

Per-row settings let one batch hold a whole sweep grid (every temperature x top_p x sample), so the GPU decodes
many rows per step instead of one setting's few. The warping is transformers' own, row by row:
TemperatureLogitsWarper, then TopPLogitsWarper (keep the smallest set of tokens whose probability reaches top_p,
at least one), then a multinomial draw; temperature 0 is greedy.

`static_decode` is transformers' `generate()` for left-padded prompts (same positions, same masking, same
sampling), written over a StaticCache so that every decoding step has the same shapes: on CUDA the step is
recorded once as a CUDA graph and replayed, which removes the per-token launch overhead of a 4-bit model.
transformers 5.17's static cache layers write where their own counter (`cumulative_length`) points and ignore
`cache_position`; each step sets that counter to its slot first, so the warm-up run before recording and every
replay write the slot the mask expects.
`dequantized_weights` lets the 4-bit layers compute from a bf16 copy while decoding, where GPU memory allows.
"""

from __future__ import annotations

from contextlib import contextmanager

FINISHED_CHECK_EVERY = 16  # decoding steps between checks that every row has ended (each check waits for the GPU)


def warp_scores(logits, temperature, top_p):
    """Float32 scores of `logits` (B, V) after each row's temperature and top_p; -inf where a token is cut.

    Rows with temperature 0 keep only their argmax (greedy), so a multinomial draw returns it.
    """
    import torch

    scores = logits.float()
    greedy = temperature <= 0
    scores = scores / torch.where(greedy, 1.0, temperature).unsqueeze(1)
    sorted_scores, sorted_ids = torch.sort(scores, descending=False, dim=-1)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p).unsqueeze(1)
    remove_sorted[:, -1] = False  # the most likely token always stays
    remove = remove_sorted.scatter(1, sorted_ids, remove_sorted)
    argmax = torch.zeros_like(remove).scatter_(1, scores.argmax(dim=-1, keepdim=True), True)
    remove = torch.where(greedy.unsqueeze(1), ~argmax, remove)
    return scores.masked_fill(remove, float("-inf"))


def sample_next(logits, temperature, top_p):
    """One token per row, drawn from warp_scores."""
    import torch

    return torch.multinomial(warp_scores(logits, temperature, top_p).softmax(dim=-1), num_samples=1).squeeze(1)


def row_sampling_processor(temperatures: list[float], top_ps: list[float]):
    """A transformers LogitsProcessor applying warp_scores with these per-row settings inside `generate()`."""
    import torch
    from transformers import LogitsProcessor

    class RowSampling(LogitsProcessor):
        settings = None  # (temperature, top_p) tensors on the scores' device, made on the first token

        def __call__(self, input_ids, scores):
            if self.settings is None:
                self.settings = [torch.tensor(v, device=scores.device, dtype=torch.float32) for v in (temperatures, top_ps)]
            return warp_scores(scores, *self.settings)

    return RowSampling()


def static_decode(model, input_ids, attention_mask, temperatures, top_ps, max_new_tokens: int, eos_ids, pad_id: int,
                  cuda_graph: bool = True, streamer=None):
    """New token ids (B, max_new_tokens) for left-padded prompts: the end-of-sequence token kept, padding after it.

    `streamer` (one row) gets what generate() gives its streamer: the prompt, each new token up to the
    end-of-sequence token, then end().
    """
    import torch
    from transformers import StaticCache

    device = input_ids.device
    rows, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    temperature = torch.tensor(temperatures, device=device, dtype=torch.float32)
    top_p = torch.tensor(top_ps, device=device, dtype=torch.float32)
    eos = torch.tensor(sorted(eos_ids), device=device)
    dtype = model.get_input_embeddings().weight.dtype  # what attention computes in (not the fp32 adapters')
    min_value = torch.finfo(dtype).min

    cache = StaticCache(config=model.config, max_cache_len=total)
    slots = torch.arange(total, device=device)
    prompt_slots = torch.zeros((rows, total), dtype=torch.bool, device=device)
    prompt_slots[:, :prompt_len] = attention_mask.bool()
    real_tokens = attention_mask.long().sum(dim=1, keepdim=True)

    # Prefill: causal over the real prompt tokens; a padding query sees everything (its output is never used, and a
    # row with nothing to attend to would give NaN).
    allowed = prompt_slots.unsqueeze(1) & (slots.view(1, 1, -1) <= torch.arange(prompt_len, device=device).view(1, -1, 1))
    allowed |= ~allowed.any(dim=-1, keepdim=True)
    positions = (attention_mask.long().cumsum(dim=-1) - 1).masked_fill(attention_mask == 0, 1)
    logits = model(
        input_ids=input_ids,
        attention_mask=_additive(allowed.unsqueeze(1), dtype, min_value),
        position_ids=positions,
        cache_position=torch.arange(prompt_len, device=device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]

    token = torch.zeros((rows, 1), dtype=torch.long, device=device)
    cache_position = torch.zeros(1, dtype=torch.long, device=device)
    write_counters = [layer.cumulative_length for layer in cache.layers]  # on the device since the prefill

    def step():
        """One token per row at slot cache_position: sees its real prompt tokens and every generated slot so far."""
        for counter in write_counters:
            counter.copy_(cache_position[0])  # the slot this step writes, however often it has run
        seen = prompt_slots | ((slots >= prompt_len) & (slots <= cache_position)).unsqueeze(0)
        return model(
            input_ids=token,
            attention_mask=_additive(seen[:, None, None, :], dtype, min_value),
            position_ids=real_tokens + (cache_position - prompt_len),
            cache_position=cache_position,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]

    if streamer is not None:
        streamer.put(input_ids.cpu())
    replay = None
    new_ids = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    for k in range(max_new_tokens):
        chosen = sample_next(logits, temperature, top_p).masked_fill(finished, pad_id)
        new_ids[:, k] = chosen
        finished |= torch.isin(chosen, eos)
        if streamer is not None:  # the host waits for each token anyway, so the loop may stop right at the end
            streamer.put(chosen.cpu())
            if bool(finished.all()):
                break
        if k == max_new_tokens - 1 or (k % FINISHED_CHECK_EVERY == FINISHED_CHECK_EVERY - 1 and bool(finished.all())):
            break
        token.copy_(chosen.unsqueeze(1))
        cache_position.fill_(prompt_len + k)
        if cuda_graph and _graphs_supported(device):
            if replay is None:
                replay, graph_logits = _record(step)
            replay()
            logits = graph_logits
        else:
            logits = step()
    if streamer is not None:
        streamer.end()
    return new_ids


def _graphs_supported(device) -> bool:
    """CUDA graphs exist on CUDA devices only (a CPU test stands in for recording here)."""
    return device.type == "cuda"


def _additive(allowed, dtype, min_value):
    """A boolean attention mask as the additive one attention adds to its scores (0 where allowed)."""
    import torch

    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, min_value)


def _record(step):
    """(replay, output): `step` recorded as a CUDA graph after one warm-up run; replay() rewrites output in place."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: same inputs as the first replay, which rewrites the same cache slot
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = step()
    return graph.replay, output


@contextmanager
def dequantized_weights(model, keep_free_bytes: int = 2 * 2**30):
    """Inside the block, every bitsandbytes 4-bit layer computes from a dequantized copy of its weight.

    For a few rows (a decoding step) bitsandbytes computes from the packed weight in a fused 4-bit kernel; the copy
    holds the same weight values for a dense matmul, 1.2x faster for the sweep on an H200 (BENCHMARKS.md). Another
    kernel rounds differently: results agree to bf16 rounding, not bit for bit (the GPU suite measures how closely:
    the copy is no farther than the 4-bit kernel from the same matmuls in fp32). It costs 2.6 GB of GPU memory for
    R1-1.5B while sampling, and is skipped when it would leave less than `keep_free_bytes` free.
    """
    import functools

    import torch

    from .lora import stored_param_count
    from .models import four_bit_layers

    layers = four_bit_layers(model)
    needed = sum(stored_param_count(m.weight) * m.weight.quant_state.dtype.itemsize for m in layers)
    on_gpu = bool(layers) and layers[0].weight.device.type == "cuda"
    if not layers or (on_gpu and torch.cuda.mem_get_info()[0] - needed < keep_free_bytes):
        yield False
        return
    from bitsandbytes.functional import dequantize_4bit

    for layer in layers:
        # in the dtype the layer computes in: no cast per call (a pre-quantized checkpoint stores bf16 state)
        weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(layer.compute_dtype or layer.weight.quant_state.dtype)
        layer.forward = functools.partial(_dense_forward, layer, weight)  # shadows the class's forward
    try:
        yield True
    finally:
        for layer in layers:
            del layer.forward


def _dense_forward(layer, weight, x):
    """bitsandbytes Linear4bit.forward with the weight already dequantized."""
    import torch

    input_dtype = x.dtype
    if layer.compute_dtype is not None:
        x = x.to(layer.compute_dtype)
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return torch.nn.functional.linear(x, weight.to(x.dtype), bias).to(input_dtype)
