"""Where the time goes: the host profile of CUDA-graphed training steps and of the static-cache decoding loop.

    python benchmarks/profile_gpu.py --model /tmp/r1-random [--set key=value ...]

Prints (no record kept): the Python functions that take the host's time over 30 training steps, the GPU time
of one replayed training step, and the GPU kernels of decoding 20 prompts x 2 temperatures x 150 tokens.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def step_profiler(first: int, last: int):
    """A TrainerCallback that runs cProfile from step `first` to step `last`, then prints the top functions."""
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        profile = cProfile.Profile()

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == first:
                self.started = time.perf_counter()
                self.profile.enable()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == last:
                self.profile.disable()
                seconds = time.perf_counter() - self.started
                print(f"\n--- host profile, steps {first}-{last}: {seconds / (last - first) * 1000:.1f} ms per step ---")
                pstats.Stats(self.profile).sort_stats("tottime").print_stats(25)

    return StepProfiler()


def replay_ms(trainer, times: int = 10) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(times):
        trainer._graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / times * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    import torch

    from semifinetune.config import parse_assignments
    from semifinetune.data import prepare_data
    from semifinetune.decode import sample_next, static_decode
    from semifinetune.formats import chat_prompt
    from semifinetune.generate import eos_token_ids
    from semifinetune.lora import add_lora
    from semifinetune.models import load_model
    from semifinetune.pipeline import setup
    from semifinetune.train import build_trainer

    run_dir = Path("/tmp/profile-run")
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = {"model_name": args.model, "train_file": "data/semiconductor_guide.jsonl", "format": "guide",
                 "eval_steps": 100, **parse_assignments(args.set)}
    cfg, report = setup(run_dir, "t4", overrides)
    prepare_data(run_dir)
    model, tokenizer = load_model(cfg, report)
    model = add_lora(model, cfg)
    trainer = build_trainer(model, tokenizer, cfg, run_dir, report, [step_profiler(30, 60)])
    trainer.train()
    if getattr(trainer, "_graph", None):
        print(f"GPU time of one replayed training step: {replay_ms(trainer):.1f} ms")

    model.eval()
    tokenizer.padding_side = "left"
    questions = [chat_prompt(tokenizer, f"Question {i}: what does a fab do with wafer {i}?") for i in range(20)] * 2
    encoded = tokenizer(questions, return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
    temperatures, top_ps = [0.6] * 20 + [0.3] * 20, [0.95] * 40
    eos = eos_token_ids(model, tokenizer)
    with torch.inference_mode():
        static_decode(model, encoded["input_ids"], encoded["attention_mask"], temperatures, top_ps, 8, eos, tokenizer.pad_token_id)
        torch.cuda.synchronize()
        start = time.perf_counter()
        static_decode(model, encoded["input_ids"], encoded["attention_mask"], temperatures, top_ps, 150, eos, tokenizer.pad_token_id)
        torch.cuda.synchronize()
        print(f"static_decode 40 rows x 150 tokens: {time.perf_counter() - start:.2f} s")
        logits = torch.randn(40, model.config.vocab_size, device="cuda", dtype=torch.bfloat16)
        t, p = torch.tensor(temperatures, device="cuda"), torch.tensor(top_ps, device="cuda")
        sample_next(logits, t, p)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(50):
            sample_next(logits, t, p)
        torch.cuda.synchronize()
        print(f"sample_next 40 rows: {(time.perf_counter() - start) / 50 * 1000:.2f} ms")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            static_decode(model, encoded["input_ids"], encoded["attention_mask"], temperatures, top_ps, 40, eos, tokenizer.pad_token_id)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=20))


if __name__ == "__main__":
    main()
