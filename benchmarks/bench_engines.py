"""Notebook 06's sampling workload through each decoding engine: tokens/s, peak memory, agreement, reproducibility.

    python benchmarks/bench_engines.py --model /tmp/r1-random --out results.json [--rows 1024] [--ways a,b]

The workload: held-out questions x the t4 sweep grid (5 temperatures x 3 top_p, each row its own), 512 new tokens,
the R1 architecture in 4-bit with a LoRA adapter (random B weights, so the adapter changes the answers). Random
weights almost never emit EOS: every answer runs to 512 tokens, the worst case. Ways:
- static: semifinetune.generate (static cache, CUDA-graphed step, attention over the filled slots per KV_BUCKET,
  grouped-query attention without copying the keys, top_p cut among candidates), batch from free memory;
- static_b512, static_b2048: the same at a fixed batch;
- static_full_cache: the same loop with transformers' SDPA attention over the whole cache (the engine before);
- static_torch_kernels: the loop with torch's draw instead of sample_kernel's;
- continuous: transformers' continuous batching (`init_continuous_batching`: paged cache, finished requests
  replaced by queued ones), per-request temperature and top_p (`per_request_processors=True`);
  continuous_small: the same on 32 requests x 32 tokens, with every thread's stack printed after 2 minutes;
- breakdown: milliseconds a decoding step takes (tuned, the adapter not folded, base) and sampling alone, at 73
  rows (an evaluation's batch) and at --rows.
Each engine's greedy answers to 16 questions (64 tokens) are compared with transformers' generate(), and one small
sampled workload is run twice with the same seed to see whether it reproduces.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "gpu"))

from gpu_helpers import QUESTIONS, greedy_ids, mean_agreement, r1_with_random_adapter  # noqa: E402
from record import record  # noqa: E402

NEW_TOKENS = 512
GREEDY = (16, 64)  # questions, tokens
REPRO_ROWS = 64


def workload(rows: int):
    """(questions, settings): the t4 grid's rows in sweep order, cut to `rows`."""
    from semifinetune.config import make_config
    from semifinetune.sweep import sweep_settings

    cfg = make_config("t4")
    grid = sweep_settings(cfg)  # every row at cfg.max_new_tokens, NEW_TOKENS
    pairs = [(q, s) for s in grid for _ in range(cfg.sweep_samples) for q in QUESTIONS]
    pairs = (pairs * (rows // len(pairs) + 1))[:rows]
    return [q for q, _ in pairs], [s for _, s in pairs]


@contextmanager
def patched(module, name: str, value):
    kept = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, kept)


def torch_kernels():
    """The loop without sample_kernel, as on a card older than Ampere."""
    from semifinetune import decode

    return patched(decode, "kernels_usable", lambda device: False)


def full_cache_attention():
    """The loop as it was: transformers' SDPA over the whole static cache (keys copied per query head)."""
    from semifinetune import decode

    @contextmanager
    def sdpa(model):
        yield False

    return patched(decode, "decode_attention", sdpa)


def static(model, tokenizer, questions, settings, batch_size=None, seed=42):
    from semifinetune.generate import generate

    rows = generate(model, tokenizer, questions, settings, seed=seed, batch_size=batch_size, progress=False)
    return [r.new_tokens for r in rows], [r.text for r in rows]


def continuous(model, tokenizer, questions, settings, seed=42, greedy=False):
    """transformers' continuous batching, each request its own temperature and top_p."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    from semifinetune.formats import chat_prompt
    from semifinetune.generate import eos_token_ids

    inputs = [tokenizer(chat_prompt(tokenizer, q), add_special_tokens=False)["input_ids"] for q in questions]
    eos = sorted(eos_token_ids(model, tokenizer))
    # Per-request temperature and top_p exist only where the config's own are not no-ops (1.0).
    config = GenerationConfig(do_sample=not greedy, max_new_tokens=settings[0].max_new_tokens, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id, top_k=0, temperature=0.6, top_p=0.95)
    cb = ContinuousBatchingConfig(per_request_processors=not greedy, seed=seed)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    results = {}
    with base.continuous_batching_context_manager(generation_config=config, continuous_batching_config=cb) as manager:
        ids = []
        for row, s in zip(inputs, settings):
            extra = {} if greedy else {"temperature": s.temperature or 1.0, "top_p": s.top_p}
            ids.append(manager.add_request(row, max_new_tokens=s.max_new_tokens, **extra))
        while len(results) < len(ids):
            result = manager.get_result(timeout=5)
            if result is not None and result.is_finished():
                results[result.request_id] = result
            elif result is None and not manager.is_running():
                raise RuntimeError("continuous batching stopped")
    out = [results[i].generated_tokens for i in ids]
    return [len(o) for o in out], out


def seconds_of(function, repeat: int = 1) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def step_breakdown(model, tokenizer, questions, settings, rows: int) -> dict:
    """Milliseconds per decoding step at `rows` rows: the whole step (tuned and base), and sampling alone on flat
    logits (random weights': top_p's cut needs the sort) and on peaked ones (a trained model's: the candidates do)."""
    import torch

    from semifinetune import decode, dense_weights
    from semifinetune.formats import chat_prompt

    tokenizer.padding_side = "left"
    encoded = tokenizer([chat_prompt(tokenizer, q) for q in questions[:rows]], return_tensors="pt", padding=True,
                        add_special_tokens=False).to("cuda")
    temperature, top_p = [s.temperature for s in settings[:rows]], [s.top_p for s in settings[:rows]]

    def decode_for(steps):
        return lambda: decode.static_decode(model, encoded["input_ids"], encoded["attention_mask"], temperature, top_p,
                                            steps, {-1}, tokenizer.pad_token_id)

    found = {"rows": rows}
    with torch.inference_mode():
        not_folded = patched(dense_weights, "_adapter_delta", lambda wrapper: None)
        for label, context in (("tuned", nullcontext()), ("tuned_adapter_not_folded", not_folded),
                               ("base", model.disable_adapter())):
            with context, dense_weights.dequantized_weights(model):
                found[f"first_run_s_{label}"] = round(seconds_of(decode_for(66)), 2)  # records the graphs (2 lengths)
                found[f"step_ms_{label}"] = round((seconds_of(decode_for(66)) - seconds_of(decode_for(2))) / 64 * 1e3, 2)
        t = torch.tensor(temperature, device="cuda")
        p = torch.tensor(top_p, device="cuda")
        vocab = model.config.vocab_size
        for label, spread in (("flat", 0.05), ("peaked", 8.0)):
            logits = (torch.randn(rows, vocab, device="cuda") * spread).to(torch.bfloat16)
            found[f"sampling_ms_{label}"] = round(seconds_of(lambda: decode.sample_next(logits, t, p), 10) * 1e3, 2)
        found["sort_cut_ms"] = round(seconds_of(lambda: decode._top_p_removed_by_sorting(logits.float(), p), 10) * 1e3, 2)
        scores = logits.float()
        parts = {"float_and_temperature": lambda: logits.float() / t.unsqueeze(1),
                 "topk_candidates": lambda: scores.topk(decode.TOP_P_CANDIDATES, dim=-1),
                 "logsumexp": lambda: scores.logsumexp(dim=-1, keepdim=True),
                 "softmax": lambda: scores.softmax(dim=-1),
                 "exponential_noise": lambda: torch.empty_like(scores).exponential_(1),
                 "argmax": lambda: scores.argmax(dim=-1)}
        found["sampling_parts_ms"] = {name: round(seconds_of(part, 10) * 1e3, 2) for name, part in parts.items()}
    return found


def cb_stacks_after(seconds: int):
    """Every thread's stack printed if continuous batching has not returned within `seconds` (then the run ends)."""
    import faulthandler

    faulthandler.dump_traceback_later(seconds, exit=True)


def timed(way, *args, **kwargs):
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    tokens, texts = way(*args, **kwargs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"rows": len(tokens), "tokens": int(sum(tokens)), "seconds": round(seconds, 2),
            "tokens_per_s": round(sum(tokens) / seconds, 1),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}, texts


def greedy_reference(model, tokenizer):
    """transformers' generate(), greedy, on the 4-bit layers: the answers every engine's greedy rows are held to."""
    return greedy_ids(model, tokenizer, QUESTIONS[: GREEDY[0]], GREEDY[1], "generate")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--ways", default="static,static_full_cache,static_b512,static_b2048,continuous")
    args = parser.parse_args()

    import torch

    from semifinetune.batch_plan import default_batch_size
    from semifinetune.dense_weights import dequantized_weights
    from semifinetune.env import environment_report
    from semifinetune.generate import SamplingSettings

    report = environment_report()
    model, tokenizer = r1_with_random_adapter(args.model)
    model.eval()
    questions, settings = workload(args.rows)
    reference = greedy_reference(model, tokenizer)
    greedy = SamplingSettings(0.0, 1.0, GREEDY[1])
    results = {"default_batch": default_batch_size(model, 64 + NEW_TOKENS)}
    for name in args.ways.split(","):
        repro = None  # two runs of one sampled workload, where the way makes them
        try:
            if name == "breakdown":
                found = {f"rows_{n}": step_breakdown(model, tokenizer, questions, settings, n)
                         for n in (73, min(args.rows, 1024))}
            elif name == "continuous_small":
                cb_stacks_after(120)
                found, _ = timed(continuous, model, tokenizer, questions[:32], [SamplingSettings(0.6, 0.95, 32)] * 32)
                import faulthandler

                faulthandler.cancel_dump_traceback_later()
            elif name.startswith("static"):
                batch = {"static_b512": 512, "static_b2048": 2048}.get(name)
                context = {"static_full_cache": full_cache_attention, "static_torch_kernels": torch_kernels}.get(name, nullcontext)
                with context():
                    # warm-up at the measured batch: Triton compiles its kernels per shape once (then cached on disk)
                    static(model, tokenizer, questions, [SamplingSettings(0.6, 0.95, 8)] * len(questions), batch)
                    found, _ = timed(static, model, tokenizer, questions, settings, batch)
                    with torch.inference_mode(), dequantized_weights(model):  # as generate() decodes
                        ids = greedy_ids(model, tokenizer, QUESTIONS[: GREEDY[0]], GREEDY[1], "graphed")
                    repro = [static(model, tokenizer, questions[:REPRO_ROWS], settings[:REPRO_ROWS])[1] for _ in range(2)]
                found["greedy_mean_agreement_with_generate"] = round(mean_agreement(reference, ids), 3)
            else:
                continuous(model, tokenizer, questions[:8], [SamplingSettings(0.6, 0.95, 8)] * 8)
                found, _ = timed(continuous, model, tokenizer, questions, settings)
                _, out = continuous(model, tokenizer, QUESTIONS[: GREEDY[0]], [greedy] * GREEDY[0], greedy=True)
                out = [list(o) for o in out]
                found["greedy_mean_agreement_with_generate"] = round(mean_agreement(reference, out), 3)
                repro = [continuous(model, tokenizer, questions[:REPRO_ROWS], settings[:REPRO_ROWS])[1] for _ in range(2)]
            if repro is not None:
                found["same_seed_same_answers"] = f"{sum(a == b for a, b in zip(*repro))}/{REPRO_ROWS}"
        except Exception as error:  # noqa: BLE001 - one engine failing must not lose the others' figures
            import traceback

            traceback.print_exc()
            found = {"error": f"{type(error).__name__}: {error}"[:400]}
        results[name] = found
        print(name, json.dumps(found), flush=True)
        torch.cuda.empty_cache()
    entry = {
        "benchmark": "engines",
        "date": datetime.date.today().isoformat(),
        "card": report["gpu_name"],
        "versions": report["versions"],
        "workload": f"{len(questions)} rows (held-out questions x the t4 grid), {NEW_TOKENS} new tokens, 4-bit + LoRA",
        **results,
    }
    speeds = {n: r["tokens_per_s"] for n, r in results.items() if isinstance(r, dict) and "tokens_per_s" in r}
    record(args.out, entry, f"{entry['workload']} on {entry['card']}: " + ", ".join(f"{n} {v:,.0f} tokens/s" for n, v in speeds.items()))


if __name__ == "__main__":
    main()
