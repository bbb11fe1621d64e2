"""The whole `t4`-profile pipeline (notebooks 01-06) on a larger card made to look like a Colab T4, timed step by step.

    python benchmarks/run_as_t4.py --model /tmp/r1 [--out benchmarks/results/as_t4_CARD.json] [--set key=value ...]

A fresh process (this file with --child) is made to look like a T4 before semifinetune is imported, then runs
`python -m semifinetune run --profile t4 --set model_name=MODEL` in itself (cli.main):

- its allocator is held to T4_BYTES (torch.cuda.set_per_process_memory_fraction on the real card);
- torch.cuda reports the T4's name, compute capability 7.5, 40 SMs and T4_BYTES of memory, of which the process may
  use all (get_per_process_memory_fraction 1.0, so that batch_plan.usable_gpu_bytes, fraction x total, is 15 GB and
  not 15 GB x the real card's fraction); bf16 as a T4 has it: emulated only, native bf16 missing;
- PyTorch's SDPA keeps the backends a T4 has, memory-efficient and math: flash and cuDNN attention need sm80+.

So the package chooses fp16 by itself, plans a T4's batches, and the T4 paths of workload.py and of bitsandbytes'
4-bit kernel choice are taken. What stays the real card's: the speed, and the kernels themselves. CUDA and Triton
code runs as built for the real card (Triton's driver is made before the patches, since code it built for 7.5 would
not load here), so a kernel that needs more than a T4's shared memory, or instructions it lacks, still runs.

This process times the steps from the pipeline's `== step` lines, samples nvidia-smi, and reads the run's files; the
entry is kept as RUN_DIR/as_t4.json, and with --out recorded (JSON list and BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_cpu_pipeline import step_seconds  # noqa: E402
from bench_gpu_pipeline import ANSWER_FILES, PeakMemory, generated  # noqa: E402
from record import record  # noqa: E402

T4_NAME = "Tesla T4"  # what torch reports on Colab; workload.py and the T4 estimates match on "T4"
T4_CAPABILITY = (7, 5)
T4_SMS = 40  # bitsandbytes picks its 4-bit kernel by capability and SM count
T4_BYTES = 15 * 10**9  # Colab's "15 GB", as tests/gpu/test_t4_memory.py holds a process to it
PROCESS_FILE = "as_t4_process.json"  # the child's own figures: what it saw and planned
ENTRY_FILE = "as_t4.json"


class T4Properties:
    """A device's properties with a T4's name, capability, SMs and memory; anything else is the real card's."""

    name = T4_NAME
    major, minor = T4_CAPABILITY
    multi_processor_count = T4_SMS
    total_memory = T4_BYTES

    def __init__(self, real):
        self._real = real

    def __getattr__(self, attribute):
        return getattr(self._real, attribute)


def keep_triton_on_the_real_card() -> None:
    """Triton's driver takes torch.cuda.get_device_capability when it is first used: made now, it compiles for the
    real card."""
    try:
        import triton
    except ImportError:  # nothing compiles Triton code then
        return
    triton.runtime.driver.active.get_current_target()  # creates the driver, which keeps the real capability


def look_like_a_t4(torch) -> dict:
    """Hold this process to a T4's memory and make torch report a T4 (this module's docstring); the real card's
    name and memory, read before."""
    cuda = torch.cuda
    real_properties, real_mem_get_info = cuda.get_device_properties, cuda.mem_get_info
    real = real_properties(0)
    cuda.set_per_process_memory_fraction(T4_BYTES / real.total_memory)  # the allocator's limit: the real enforcement
    cuda.get_device_properties = lambda device=None: T4Properties(real_properties(device))
    cuda.get_device_name = lambda device=None: T4_NAME
    cuda.get_device_capability = lambda device=None: T4_CAPABILITY
    # torch on a real T4: True by default (it emulates bf16), False with including_emulation=False (env.py asks so)
    cuda.is_bf16_supported = lambda including_emulation=True: bool(including_emulation)
    cuda.get_per_process_memory_fraction = lambda device=None: 1.0  # all of the simulated card's T4_BYTES
    # What a library asks before it allocates (accelerate, transformers): the T4's free memory, not the real card's.
    cuda.mem_get_info = lambda device=None: (
        max(0, min(real_mem_get_info(device)[0], T4_BYTES - cuda.memory_reserved(device))), T4_BYTES)
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
    return {"real_card": real.name, "real_memory_bytes": real.total_memory}


class PeakReserved:
    """torch.cuda.max_memory_reserved over the whole process: the pipeline resets the peak before training and before
    the sweep, so each reset first keeps the peak so far."""

    def __init__(self, cuda):
        self.cuda, self.before_resets = cuda, 0
        reset = cuda.reset_peak_memory_stats

        def reset_peak_memory_stats(device=None):
            self.before_resets = max(self.before_resets, cuda.max_memory_reserved(device))
            reset(device)

        cuda.reset_peak_memory_stats = reset_peak_memory_stats

    def bytes(self) -> int:
        return max(self.before_resets, self.cuda.max_memory_reserved())


def record_results(module, name: str) -> list:
    """Wrap module.name so that every call's result is also appended to the list returned."""
    results, function = [], getattr(module, name)

    def recorded(*args, **kwargs):
        results.append(function(*args, **kwargs))
        return results[-1]

    setattr(module, name, recorded)
    return results


def cli_args(model: str, run_dir: str, settings: list[str]) -> list[str]:
    """`python -m semifinetune`'s arguments for the t4 pipeline on `model`; the --set assignments come after the
    model, so a model_name among them wins."""
    assignments = [f"model_name={model}", *settings]
    return ["run", "--profile", "t4", "--run-dir", run_dir, *[part for a in assignments for part in ("--set", a)]]


def run_child(args) -> int:
    """The pipeline in this process, made to look like a T4 first; its figures into RUN_DIR/PROCESS_FILE."""
    # A Colab runtime has one GPU: the first one visible here.
    os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    import torch

    if not torch.cuda.is_available():
        sys.exit("run_as_t4.py needs a CUDA GPU to stand in for the T4; torch sees none.")
    keep_triton_on_the_real_card()
    seen = look_like_a_t4(torch)
    peak = PeakReserved(torch.cuda)
    from semifinetune import batch_plan, generate
    from semifinetune.cli import main

    planned = record_results(generate, "default_batch_size")  # generate() plans through its own imported name
    try:
        return main(cli_args(args.model, args.run_dir, args.set))
    finally:
        figures = {**seen, "simulated_card": T4_NAME, "usable_gpu_bytes": batch_plan.usable_gpu_bytes(),
                   "planned_batches": planned, "peak_reserved_bytes": peak.bytes()}
        Path(args.run_dir).mkdir(parents=True, exist_ok=True)  # a run refused before its folder was made
        Path(args.run_dir, PROCESS_FILE).write_text(json.dumps(figures, indent=1) + "\n")


def read_json(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def run_parent(args) -> None:
    """The child timed step by step and watched with nvidia-smi; the entry from the run's files."""
    import shutil

    shutil.rmtree(args.run_dir, ignore_errors=True)
    command = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", "--model", args.model,
               "--run-dir", args.run_dir, *[part for a in args.set for part in ("--set", a)]]
    memory = PeakMemory()
    memory.start()
    start = time.perf_counter()
    steps = step_seconds(command, start)  # exits where the pipeline fails
    total = time.perf_counter() - start
    memory.done.set()
    run = Path(args.run_dir)
    process, env = read_json(run, PROCESS_FILE), read_json(run, "env.json")
    stats = read_json(run, "train_log.json")["stats"]
    answers = {name: generated(run, name) for name in ANSWER_FILES if (run / name).exists()}
    tokens = int(sum(frame["new_tokens"].sum() for frame in answers.values()))
    rows = sum(len(frame) for frame in answers.values())
    notebook06 = sum(seconds for name, seconds in steps.items() if name.startswith("06"))
    entry = {
        "benchmark": "as_t4_pipeline",
        "date": datetime.date.today().isoformat(),
        "card": process["real_card"],
        "simulated_card": process["simulated_card"],
        "reported_card": env["gpu_name"],
        "compute_capability": env["compute_capability"],
        "bf16_supported": env["bf16_supported"],
        "precision": env["precision"],
        "train_precision": stats["precision"],
        "versions": env["versions"],
        "settings": read_json(run, "config.json"),
        "total_s": round(total, 1),
        "step_s": steps,
        "train_s": stats["train_runtime_s"],
        "notebook06_s": round(notebook06, 1),
        "notebook06_answers": rows,
        "notebook06_answers_by_file": {name: len(frame) for name, frame in answers.items()},
        "notebook06_new_tokens": tokens,
        "notebook06_tokens_per_s": round(tokens / notebook06, 1),
        "memory_limit_bytes": T4_BYTES,
        "usable_gpu_bytes": process["usable_gpu_bytes"],
        "planned_batches": process["planned_batches"],
        "peak_reserved_bytes": process["peak_reserved_bytes"],
        "train_peak_reserved_gib": stats.get("gpu_peak_reserved_gib"),
        "sweep_memory": read_json(run, "recommended_settings.json").get("sweep_memory", {}),
        "peak_gpu_memory_gib": memory.peak(),  # nvidia-smi: the whole card, CUDA context and other processes included
        "peak_gpu_memory_gib_by_step": memory.peaks_by_step(start, steps),
    }
    (run / ENTRY_FILE).write_text(json.dumps(entry, indent=1) + "\n")
    print(json.dumps(entry, indent=1))
    if args.out:
        record(args.out, entry, f"t4 pipeline as a T4 ({entry['precision']}, 15 GB, no flash attention) on "
               f"{entry['card']}: {entry['total_s']:.0f} s in all, notebook 06 {notebook06:.0f} s for {rows} answers "
               f"({tokens:,} new tokens); batches planned {sorted(set(entry['planned_batches']))}, peak reserved "
               f"{entry['peak_reserved_bytes'] / 2**30:.2f} GiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the model folder (benchmarks/r1_arch.py builds one)")
    parser.add_argument("--out", help="record the entry: the JSON list to append to, and a row in BENCHMARKS.md")
    parser.add_argument("--run-dir", default="/tmp/bench-as-t4")
    parser.add_argument("--set", action="append", default=[], help="key=value over the t4 profile")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the process made to look like a T4
    args = parser.parse_args(argv)
    if args.child:
        sys.exit(run_child(args))
    run_parent(args)


if __name__ == "__main__":
    main()
