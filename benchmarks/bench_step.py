"""Where a decoding step's time goes, at 64, 256 and 822 rows, and what each lever changes.

    python benchmarks/bench_step.py --model /tmp/r1 --out benchmarks/results/step_CARD.json [--rows 64,256,822]

The R1 architecture in 4-bit with a LoRA adapter (random B weights), decoding through the dequantized copy with the
adapter folded in, as generate() does. Each batch is prefilled with held-out questions x the t4 sweep grid; the
step is then timed at the answer's middle (prompt + 256 slots; an answer of 512 tokens reads on average that much):
- the recorded step (CUDA graph replay) under each of VARIANTS, the levers added one at a time: transformers' own
  decoder layers first, the loop as it runs on Ampere and later cards last;
- the forward pass's parts, from torch's profiler over the same step run eagerly: the projections (q/k/v, o,
  gate/up/down), the LM head, attention, the norms, rotary, and the rest (cache writes, residual adds, SiLU x up,
  masks); the replay's time beyond the kernels' sum is the graph's own overhead (gaps between kernels). With the
  fused layers the profiler ties no Triton kernel to its range: "norm" holds only torch's mean, and the Triton
  kernels of the norms, rotary and SiLU x up count in "rest";
- the step's kernels by name (launches, microseconds) as the loop runs it, and the draw's;
- sampling: torch's draw (decode.sample_next) and the Triton draw, on flat logits (random weights') and peaked ones,
  and the Triton draw on the step's own logits with a new seed each time;
- at 822 rows, decode() itself: 512 steps of the whole batch, per step (the replay, the draw and the loop's work);
- attention's accuracy at 16 rows with retrieved notes (long prompts): the loop's attention and transformers' SDPA,
  their outputs and the step's logits against fp32 attention on the same inputs;
- with --attention-settings, attention_kernel in one layer under 27 launch settings (how its BLOCK, WARPS and
  STAGES were chosen).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "gpu"))

from bench_engines import workload  # noqa: E402
from gpu_helpers import QUESTIONS, r1_with_random_adapter  # noqa: E402
from record import record  # noqa: E402

NEW_TOKENS = 512
MIDDLE = 256
# The step's levers in the order they were added: the fused layers, attention_kernel, q/k/v and gate/up each one
# matmul, rotary writing the cache, the LM head writing the step's logits, attention reading the filled slots only
# (not up to the bucket), each row's first slot given (not found from the mask), each prompt's slots read from one
# row, each RMSNorm one kernel (its mean in torch's order), a layer's last add left to the next norm's kernel.
# VARIANTS[i] has the first i levers on.
LEVERS = ("fused", "kernel", "merged", "cache_write", "head_out", "filled", "first", "shared", "norm", "add_in_norm")
VARIANTS = ("torch_layers", "fused_layers", "fused_attention_kernel", "fused_attention_kernel_merged",
            "rotary_writes_cache", "head_writes_logits", "filled_slots_only", "first_slot_given", "prompts_read_once",
            "norm_one_kernel", "add_in_next_norm")
TOP_KERNELS = 30
ROWS_TIMED_IN_LOOP = 822  # decode() itself is timed at this batch (two calls of 512 steps)
PROJECTIONS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "gate_proj": "mlp", "up_proj": "mlp",
               "down_proj": "mlp"}


def cuda_ms(function, repeat: int = 20) -> float:
    import torch

    function()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeat):
        function()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def prefilled(model, tokenizer, prompts):
    """A StaticDecoder for these prompts, prefilled as decode() does, its step placed at the answer's middle:
    (decoder, bucket length of that step)."""
    from semifinetune.decode import KV_BUCKET, StaticDecoder
    from semifinetune.decode_attention import decode_attention

    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    rows, prompt_len = ids.shape
    decoder = StaticDecoder(model, rows, prompt_len, NEW_TOKENS)
    decoder.load_prompts(mask, tokenizer.pad_token_id)
    with decode_attention(model) as cut:
        decoder.graph_logits = decoder._prefill(ids, mask, cut, share_prompts=True)
    position = prompt_len + MIDDLE
    decoder.cache_position.fill_(position)
    decoder.token.random_(0, model.config.vocab_size)
    return decoder, min(decoder.total, position // KV_BUCKET * KV_BUCKET + KV_BUCKET), encoded


@contextmanager
def step_levers(model, decoder, levers: dict):
    """The step's layers, attention and cache update as `levers` (LEVERS: on or off) has them; the merged matmuls
    are projections_merged's."""
    from semifinetune import attention_kernel, layer_kernels
    from semifinetune import fused_layers as fused_module
    from semifinetune.decode_attention import decode_attention

    kept = fused_module._static_step_layer, attention_kernel.attend, layer_kernels._order, fused_module._layer_output
    if not levers["norm"]:  # three kernels, torch's mean between them
        layer_kernels._order = lambda x: None
    if not levers["add_in_norm"]:  # a layer's last add its own launch before a one-kernel norm
        output = kept[3]
        fused_module._layer_output = lambda down, residual: (
            residual + down if layer_kernels.norm_in_one_kernel(down) else output(down, residual))
    if not levers["cache_write"]:
        fused_module._static_step_layer = lambda *args: None
    if not levers["filled"]:  # reads up to the mask's length, the filled slots rounded up to decode.KV_BUCKET
        attend = kept[1]
        attention_kernel.attend = lambda q, k, v, mask, scale, prompt_rows=None, filled=None: attend(
            q, k, v, mask, scale, prompt_rows)
    try:
        with decode_attention(model, levers["kernel"], prompt_rows(decoder, levers)), \
                fused_module.fused_layers(model, levers["fused"]):
            yield
    finally:
        (fused_module._static_step_layer, attention_kernel.attend, layer_kernels._order,
         fused_module._layer_output) = kept


def prompt_rows(decoder, levers: dict):
    """attention_kernel's prompt_rows as `levers` has them: none, the first slots alone, or with the shared prompts."""
    import torch

    if not levers["first"]:
        return None
    first, source, shared = decoder.prompt_rows()
    return first, source, shared if levers["shared"] else torch.zeros_like(shared)


@contextmanager
def labelled(model, kernel: bool, prompt_rows=None):
    """torch.profiler ranges around the projections, the LM head, the norms, rotary and attention, in the model's own
    layers and in the fused ones (fused_layers)."""
    import torch
    from transformers import AttentionInterface
    from transformers.models.qwen2 import modeling_qwen2

    from semifinetune import layer_kernels
    from semifinetune.decode_attention import NAME, grouped_attention

    handles = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        norm = type(module).__name__.endswith("RMSNorm")
        label = PROJECTIONS.get(leaf) or ("lm_head" if leaf == "lm_head" else "norm" if norm else None)
        if label is None:
            continue
        ranges = []  # the open range of this module's call

        def enter(module, args, label=label, ranges=ranges):
            ranges.append(torch.profiler.record_function(label).__enter__())

        def leave(module, args, output, ranges=ranges):
            ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def ranged(label, function):
        def wrapper(*args, **kwargs):
            with torch.profiler.record_function(label):
                return function(*args, **kwargs)
        return wrapper

    functions = [(modeling_qwen2, "apply_rotary_pos_emb", "rotary"), (layer_kernels, "rotary", "rotary"),
                 (layer_kernels, "rms_norm", "norm")]
    originals = [getattr(owner, name) for owner, name, _ in functions]
    for (owner, name, label), original in zip(functions, originals):
        setattr(owner, name, ranged(label, original))
    AttentionInterface.register(NAME, ranged("attention", functools.partial(grouped_attention, kernel=kernel,
                                                                          prompt_rows=prompt_rows)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for (owner, name, _), original in zip(functions, originals):
            setattr(owner, name, original)
        AttentionInterface.register(NAME, grouped_attention)


@contextmanager
def projections_merged(model, merged: bool):
    """dense_weights' merged projections as they are (`merged`), or set aside for the block: each projection its own
    matmul, as before they were merged."""
    from semifinetune.dense_weights import MERGED

    held = [] if merged else [(m, getattr(m, MERGED)) for m in model.modules() if hasattr(m, MERGED)]
    for module, _ in held:
        delattr(module, MERGED)
    try:
        yield
    finally:
        for module, value in held:
            setattr(module, MERGED, value)


def forward_parts(model, decoder, length: int, levers: dict) -> dict:
    """Milliseconds of GPU kernels per part of one eager step, its layers transformers' own or fused, its attention
    SDPA or attention_kernel."""
    import torch

    out = decoder.graph_logits if levers["head_out"] else None
    with step_levers(model, decoder, levers):
        decoder._step(length, out)
        torch.cuda.synchronize()
        with labelled(model, levers["kernel"], prompt_rows(decoder, levers)), torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
            decoder._step(length, out)
            torch.cuda.synchronize()
    parts = {"qkv": 0.0, "o": 0.0, "mlp": 0.0, "lm_head": 0.0, "attention": 0.0, "norm": 0.0, "rotary": 0.0}
    cpu, gpu = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    kernels = [e for e in prof.events() if e.device_type == gpu and e.name not in parts]  # not the ranges' GPU marks
    for event in prof.events():
        if event.name in parts and event.device_type == cpu:
            parts[event.name] += event.device_time_total / 1e3  # the kernels launched inside the range
    total = sum(e.device_time_total for e in kernels) / 1e3
    found = {name: round(ms, 3) for name, ms in parts.items()}
    found["rest"] = round(total - sum(parts.values()), 3)
    found["kernels_total"] = round(total, 3)
    found["kernel_launches"] = len(kernels)
    return found


def replay_ms(model, decoder, length: int, levers: dict) -> float:
    """The step recorded as the loop records it (its logits copied out where the head does not write them) and
    replayed."""
    from semifinetune.decode import _record

    out = decoder.graph_logits
    with step_levers(model, decoder, levers):
        if levers["head_out"]:
            step = functools.partial(decoder._step, length, out)
        else:
            step = lambda: out.copy_(decoder._step(length))  # noqa: E731 (as the loop recorded it before)
        replay, _, _ = _record(step)
        return cuda_ms(replay)


def kernel_table(model, decoder, length: int, settings) -> dict:
    """The step as the loop runs it (every lever) and sample_kernel's draw on the step's own logits, run eagerly
    under torch's profiler: per kernel name, its launches and microseconds, the TOP_KERNELS largest."""
    import torch

    from semifinetune.decode import sample_next

    t, p = (torch.tensor(v, device="cuda") for v in ([s.temperature for s in settings], [s.top_p for s in settings]))
    found = {}
    with step_levers(model, decoder, dict.fromkeys(LEVERS, True)):
        for name, run in (("step", lambda: decoder._step(length, decoder.graph_logits)),
                          ("draw", lambda: sample_next(decoder.graph_logits, t, p, seed=3))):
            run()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                run()
                torch.cuda.synchronize()
            table = {}
            for event in prof.events():
                if event.device_type == torch.autograd.DeviceType.CUDA:
                    count, us = table.get(event.name[:90], (0, 0.0))
                    table[event.name[:90]] = (count + 1, us + event.device_time_total)
            ranked = sorted(table.items(), key=lambda item: -item[1][1])
            found[name] = {"launches": sum(c for c, _ in table.values()),
                           "total_us": round(sum(us for _, us in table.values()), 1),
                           "kernels": [[n, c, round(us, 1)] for n, (c, us) in ranked[:TOP_KERNELS]]}
    return found


def draw_on_model_logits(decoder, settings, draws: int = 200) -> dict:
    """sample_kernel's draw on the step's own logits (random weights', at the answer's middle), a new seed each
    time, timed with CUDA events; and how many rows its four draws left to _settle over those draws."""
    import torch

    from semifinetune import sample_kernel
    from semifinetune.decode import sample_next

    t, p = (torch.tensor(v, device="cuda") for v in ([s.temperature for s in settings], [s.top_p for s in settings]))
    logits = decoder.graph_logits
    seeds = iter(range(1, 10**6))
    ms = cuda_ms(lambda: sample_next(logits, t, p, seed=next(seeds)), repeat=draws)
    settled = sum(int(sample_kernel.draw(logits, t, p, seed)[1].sum()) for seed in range(draws))
    return {"kernel_ms": round(ms, 3), "settled_rows": settled, "draws": draws}


def loop_ms(decoder, encoded, settings, pad_id: int) -> dict:
    """decode() of the whole batch to NEW_TOKENS tokens (no row ends), its graphs recorded by a first call: the
    second call's seconds, and per step (the replay, the draw and the loop's own work between them)."""
    import torch

    args = (encoded["input_ids"], encoded["attention_mask"], [s.temperature for s in settings],
            [s.top_p for s in settings], {-1}, pad_id)
    decoder.decode(*args)
    torch.cuda.synchronize()
    start = time.perf_counter()
    decoder.decode(*args)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "ms_per_step": round(seconds * 1e3 / NEW_TOKENS, 3)}


def sampling_ms(rows: int, vocab: int, temperatures, top_ps) -> dict:
    import torch

    from semifinetune.decode import sample_next

    t = torch.tensor(temperatures, device="cuda")
    p = torch.tensor(top_ps, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    found = {}
    for label, spread in (("flat", 0.05), ("peaked", 8.0)):
        logits = (torch.randn(rows, vocab, device="cuda", generator=generator) * spread).to(torch.bfloat16)
        found[f"torch_{label}"] = round(cuda_ms(lambda: sample_next(logits, t, p, generator)), 3)
        found[f"kernel_{label}"] = round(cuda_ms(lambda: sample_next(logits, t, p, generator, seed=1)), 3)
    return found


def at_rows(model, tokenizer, rows: int) -> dict:
    import torch

    from semifinetune.formats import chat_prompt

    questions, settings = workload(rows)
    prompts = [chat_prompt(tokenizer, q) for q in questions]
    with torch.inference_mode():
        decoder, length, encoded = prefilled(model, tokenizer, prompts)
        found = {"rows": rows, "prompt_len": int(decoder.prompt_len.item()), "attention_length": length}
        for on, name in enumerate(VARIANTS):
            levers = {lever: i < on for i, lever in enumerate(LEVERS)}
            with projections_merged(model, levers["merged"]):
                step = {"step_graph_ms": round(replay_ms(model, decoder, length, levers), 3),
                        "forward_parts_ms": forward_parts(model, decoder, length, levers)}
            step["graph_overhead_ms"] = round(step["step_graph_ms"] - step["forward_parts_ms"]["kernels_total"], 3)
            found[name] = step
            print(name, step["step_graph_ms"], flush=True)
        found["kernels"] = kernel_table(model, decoder, length, settings)
        found["draw_on_model_logits"] = draw_on_model_logits(decoder, settings)
        found["sampling_ms"] = sampling_ms(rows, model.config.vocab_size, [s.temperature for s in settings],
                                           [s.top_p for s in settings])
        if rows == ROWS_TIMED_IN_LOOP:
            found["loop"] = loop_ms(decoder, encoded, settings, tokenizer.pad_token_id)
    found["allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    del decoder
    gc.collect()
    torch.cuda.empty_cache()
    return found


def accuracy(model, tokenizer) -> dict:
    """Attention variants against fp32: 16 rows with 3 retrieved notes each, after 15 greedy tokens of their own."""
    import torch
    from test_decoding import _with_retrieved_notes

    from semifinetune.decode import StaticDecoder
    from semifinetune.formats import chat_prompt

    tokenizer.padding_side = "left"
    prompts = [chat_prompt(tokenizer, q) for q in _with_retrieved_notes(QUESTIONS[:16])]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
    with torch.inference_mode():
        return decoder_accuracy(model, StaticDecoder(model, 16, encoded["input_ids"].shape[1], ANSWERED), encoded,
                                tokenizer.pad_token_id)


ANSWERED = 16  # greedy tokens decoded before the compared step: its cache holds real keys and values


def decoder_accuracy(model, decoder, encoded, pad_id: int) -> dict:
    """attention_errors at the step after `decoder` (made for ANSWERED new tokens) has decoded them for `encoded`."""
    from gpu_helpers import attention_errors

    from semifinetune.decode import KV_BUCKET
    from semifinetune.decode_attention import decode_attention

    rows = encoded["input_ids"].shape[0]
    ids = decoder.decode(encoded["input_ids"], encoded["attention_mask"], [0.0] * rows, [1.0] * rows, {-1}, pad_id)
    position = int(decoder.prompt_len.item()) + ANSWERED - 1  # the slot after the last one decode() wrote
    decoder.cache_position.fill_(position)
    decoder.token[:rows].copy_(ids[:, -1:])
    with decode_attention(model):
        errors = attention_errors(decoder, -(-(position + 1) // KV_BUCKET) * KV_BUCKET)
    return {name: {"attention_relative_error": round(a, 6), "logits_relative_error": round(b, 6)}
            for name, (a, b) in errors.items()}


def attention_settings(rows: int = 822, length: int = 320, filled: int = 295) -> list[dict]:
    """attention_kernel.attend in one layer at R1's heads under each launch setting (block, warps, stages), on
    random keys and values, rows left-padded by up to 11 slots: microseconds a call (28 calls in one graph) and the
    output's relative error against fp32 attention."""
    import itertools

    import torch

    from semifinetune import attention_kernel

    heads, key_heads, dim = 12, 2, 128
    q = torch.randn(rows, heads, 1, dim, device="cuda").to(torch.bfloat16)
    k, v = (torch.randn(rows, key_heads, length + 256, dim, device="cuda").to(torch.bfloat16) for _ in range(2))
    slot = torch.arange(length, device="cuda")
    pad = torch.randint(0, 12, (rows,), device="cuda")
    hidden = (slot[None] < pad[:, None]) | (slot[None] >= filled)
    mask = torch.zeros(rows, 1, 1, length, device="cuda", dtype=torch.bfloat16).masked_fill(
        hidden[:, None, None], torch.finfo(torch.bfloat16).min)
    scale = dim**-0.5
    keys, values = (t[:, :, :length].float().repeat_interleave(heads // key_heads, 1) for t in (k, v))
    exact = (torch.softmax(q.float() @ keys.transpose(-1, -2) * scale + mask.float(), -1) @ values).transpose(1, 2)
    found = []
    for block, warps, stages in itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3)):
        def attend():
            return attention_kernel.attend(q, k, v, mask, scale, block=block, warps=warps, stages=stages)

        error = ((attend().float() - exact).norm() / exact.norm()).item()
        found.append({"block": block, "warps": warps, "stages": stages, "error": round(error, 6),
                      "us": round(graphed_ms(attend, 28) * 1e3 / 28, 1)})
    return sorted(found, key=lambda r: r["us"])


def graphed_ms(function, calls: int) -> float:
    """One replay of a CUDA graph holding `calls` calls of `function`."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        function()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            function()
    return cuda_ms(graph.replay, 10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--attention-settings", action="store_true", help="also time the attention kernel's launch "
                        "settings (about 40 s)")
    parser.add_argument("--rows", default="64,256,822")
    args = parser.parse_args()

    from semifinetune.dense_weights import dequantized_weights
    from semifinetune.env import environment_report

    report = environment_report()
    started = time.perf_counter()
    model, tokenizer = r1_with_random_adapter(args.model)
    model.eval()
    entry = {"benchmark": "decoding_step", "date": datetime.date.today().isoformat(), "card": report["gpu_name"],
             "versions": report["versions"]}
    if args.attention_settings:
        entry["attention_settings"] = attention_settings()
        print(entry["attention_settings"][:5], flush=True)
    with dequantized_weights(model):
        entry["accuracy_vs_fp32"] = accuracy(model, tokenizer)
        print(entry["accuracy_vs_fp32"], flush=True)
        for rows in sorted((int(r) for r in args.rows.split(",")), reverse=True):  # the largest on an empty card
            entry[f"rows_{rows}"] = at_rows(model, tokenizer, rows)
            print(entry[f"rows_{rows}"], flush=True)
    entry["seconds"] = round(time.perf_counter() - started, 1)
    biggest = entry[f"rows_{max(int(r) for r in args.rows.split(','))}"]
    record(args.out, entry, f"decoding step at {biggest['rows']} rows on {entry['card']}: "
           f"{biggest['prompts_read_once']['step_graph_ms']} ms with every lever, "
           f"{biggest['fused_attention_kernel_merged']['step_graph_ms']} ms with merged projections, "
           f"{biggest['fused_attention_kernel']['step_graph_ms']} ms fused with the attention kernel, "
           f"{biggest['fused_layers']['step_graph_ms']} ms fused, {biggest['torch_layers']['step_graph_ms']} ms not; "
           f"the draw {biggest['sampling_ms']['kernel_flat']} ms (Triton) vs {biggest['sampling_ms']['torch_flat']} ms (torch)")


if __name__ == "__main__":
    main()
