"""Notebook 06's generating parts timed from inside: loading, prefill, graph recording, decoding steps, the rest.

    python benchmarks/bench_notebook06.py --model /tmp/r1 --out benchmarks/results/notebook06_CARD.json [--set k=v ...]

Trains a `t4` run first (20 steps by default: the tuned model does not stop by itself yet, the worst case), then
calls what notebook 06 calls, in its order and in one process: compare_base_tuned, compare_retrieval (reusing the
evaluation's answers) and run_sweep. Wrapped and timed (with the GPU synchronised around each, so that the host's
clock is the GPU's): the model loads, each batch's prefill, each graph recording, and each batch's decoding; inside
the decoding, each replayed step and each draw on the GPU's own clock (CUDA events). The rest is retrieval,
scoring, tables, plots and files.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "gpu"))

from bench_gpu_pipeline import ANSWER_FILES, generated  # noqa: E402
from gpu_helpers import trained_run  # noqa: E402
from record import record  # noqa: E402

TIMED = {"load": 0.0, "prefill": 0.0, "recording": 0.0, "decoding": 0.0}
COUNTS = {"loads": 0, "batches": 0, "recordings": 0}
STEP_EVENTS = {"replay": [], "draw": []}


def timed(name: str, count: str | None, function):
    """`function` with its seconds added to TIMED[name] (GPU synchronised before and after)."""
    import torch

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            torch.cuda.synchronize()
            TIMED[name] += time.perf_counter() - start
            if count:
                COUNTS[count] += 1

    return wrapper


def gpu_timed(name: str, function, counted=lambda *args: True):
    """`function` with CUDA events around each call that `counted` accepts (no synchronisation): STEP_EVENTS[name]
    collects them, read after the run. Calls nested in a timed one of the same name are not counted twice."""
    import torch

    depth = [0]

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if depth[0] or not counted(*args):
            return function(*args, **kwargs)
        depth[0] += 1
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            return function(*args, **kwargs)
        finally:
            end.record()
            depth[0] -= 1
            STEP_EVENTS[name].append((start, end))

    return wrapper


def instrument() -> None:
    """Times the loads, prefills, recordings and batches of notebook 06's generate() calls, and on the GPU's clock
    each step's replay and draw."""
    from semifinetune import decode, loaded

    loaded._load = timed("load", "loads", loaded._load)  # a fresh load, not a held model handed out again
    decode.StaticDecoder._prefill = timed("prefill", None, decode.StaticDecoder._prefill)
    decode._record = timed("recording", "recordings", decode._record)
    decode.StaticDecoder.decode = timed("decoding", "batches", decode.StaticDecoder.decode)
    replayed = lambda decoder, length: decoder.use_graphs and length in decoder.graphs  # noqa: E731 (not a recording)
    decode.StaticDecoder._next_logits = gpu_timed("replay", decode.StaticDecoder._next_logits, replayed)
    decode.sample_next = gpu_timed("draw", decode.sample_next)


def gpu_seconds(name: str) -> tuple[float, int]:
    """(GPU seconds inside the timed calls, their count)."""
    return sum(start.elapsed_time(end) for start, end in STEP_EVENTS[name]) / 1e3, len(STEP_EVENTS[name])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-dir", default="/tmp/bench-notebook06")
    parser.add_argument("--set", action="append", default=["max_steps=20"])
    args = parser.parse_args()

    import shutil

    from semifinetune.compare import compare_retrieval
    from semifinetune.config import parse_assignments
    from semifinetune.env import environment_report
    from semifinetune.evaluate import compare_base_tuned
    from semifinetune.sweep import run_sweep

    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    trained_run(run_dir, "t4", {"model_name": args.model, **parse_assignments(args.set)})
    instrument()
    parts = {}
    start = time.perf_counter()
    for name, call in (("evaluation", lambda: compare_base_tuned(run_dir, progress=False)),
                       ("retrieval comparison", lambda: compare_retrieval(run_dir, reuse_evaluation=True, progress=False)),
                       ("sweep", lambda: run_sweep(run_dir, progress=False))):
        begun = time.perf_counter()
        call()
        parts[name] = round(time.perf_counter() - begun, 1)
    total = time.perf_counter() - start
    tokens = int(sum(generated(run_dir, name)["new_tokens"].sum() for name in ANSWER_FILES))
    decoding_steps = TIMED["decoding"] - TIMED["prefill"] - TIMED["recording"]
    (replay_s, replays), (draw_s, draws) = gpu_seconds("replay"), gpu_seconds("draw")
    report = environment_report()
    entry = {
        "benchmark": "notebook06_parts",
        "date": datetime.date.today().isoformat(),
        "card": report["gpu_name"],
        "versions": report["versions"],
        "settings": args.set,
        "notebook06_s": round(total, 1),
        "parts_s": parts,
        "new_tokens": tokens,
        "tokens_per_s": round(tokens / total),
        "load_s": round(TIMED["load"], 1),
        "prefill_s": round(TIMED["prefill"], 1),
        "recording_s": round(TIMED["recording"], 1),
        "decoding_steps_s": round(decoding_steps, 1),
        "decoding_tokens_per_s": round(tokens / decoding_steps),
        "rest_s": round(total - TIMED["load"] - TIMED["decoding"], 1),
        # inside the decoding steps, on the GPU's clock: the replayed steps, the draws, and what is left (the loop's
        # small operations and the GPU waiting for the host)
        "replay_s": round(replay_s, 1),
        "replays": replays,
        "draw_s": round(draw_s, 1),
        "draws": draws,
        "between_s": round(decoding_steps - replay_s - draw_s, 1),
        **COUNTS,
    }
    print(entry, flush=True)
    record(args.out, entry, f"notebook 06's parts on {entry['card']}: {entry['notebook06_s']} s for {tokens:,} new "
           f"tokens; loads {entry['load_s']} s ({COUNTS['loads']}), prefill {entry['prefill_s']} s, recording "
           f"{entry['recording_s']} s, decoding steps {entry['decoding_steps_s']} s, the rest {entry['rest_s']} s")


if __name__ == "__main__":
    main()
