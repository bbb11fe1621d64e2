"""The whole `t4` pipeline as a T4 would run it (benchmarks/run_as_t4.py): a process held to 15 GB that sees a T4
(compute capability 7.5, no native bf16) and has no flash or cuDNN attention. A shortened workload: 20 training steps,
the 2 x 2 on 8 questions of each set, the sweep on 8 questions x 1 sample; every answer still up to 512 tokens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
T4_BYTES = 15 * 10**9
SHORT = ["max_steps=20", "sweep_questions=8", "sweep_samples=1", "retrieval_compare_questions=8"]
# the pipeline's `== step` names (pipeline.run_pipeline); the 2 x 2's name carries its k
STEPS = {"setup", "04 format data", "02 load + baseline", "05 train", "06 evaluate base vs tuned", "06 sampling sweep"}
TIMEOUT_S = 540


def run_as_t4(model: Path, run_dir: Path) -> str:
    """benchmarks/run_as_t4.py on the shortened workload; its output. A run past TIMEOUT_S is killed with the
    pipeline process it started, so that neither keeps holding the GPU."""
    command = [sys.executable, "benchmarks/run_as_t4.py", "--model", str(model), "--run-dir", str(run_dir),
               *[part for assignment in SHORT for part in ("--set", assignment)]]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert process.returncode == 0, output[-6000:]
    return output


def test_the_t4_pipeline_runs_in_fp16_on_a_t4s_batches_within_15_gb(r1_random, tmp_path):
    from semifinetune.batch_plan import SMALL_CARD_BATCH
    from semifinetune.runs import open_run
    from semifinetune.workload import notebook06_answers

    run_dir = tmp_path / "run"
    output = run_as_t4(r1_random, run_dir)
    entry = json.loads((run_dir / "as_t4.json").read_text())
    print(f"{entry['card']} as {entry['reported_card']}: {entry['total_s']} s in all, steps {entry['step_s']}; "
          f"precision {entry['precision']} (training {entry['train_precision']}), bf16 {entry['bf16_supported']}; "
          f"batches planned {entry['planned_batches']}; peak reserved {entry['peak_reserved_bytes'] / 2**30:.2f} GiB "
          f"(training {entry['train_peak_reserved_gib']} GiB, sweep {entry['sweep_memory'].get('gpu_peak_reserved_gib')} "
          f"GiB), nvidia-smi {entry['peak_gpu_memory_gib']} GiB; notebook 06 {entry['notebook06_answers']} answers "
          f"{entry['notebook06_answers_by_file']}, {entry['notebook06_new_tokens']:,} new tokens in "
          f"{entry['notebook06_s']} s")
    assert (entry["reported_card"], entry["compute_capability"]) == ("Tesla T4", "7.5")
    assert entry["bf16_supported"] is False and entry["precision"] == entry["train_precision"] == "fp16"
    assert 0 < entry["peak_reserved_bytes"] <= T4_BYTES
    assert max(entry["planned_batches"]) == SMALL_CARD_BATCH  # the T4's cap, from 15 GB (not 80, not 15 x 0.19)
    assert "Out of GPU memory" not in output  # the planned batches fit: no halving
    assert "expected on Tesla T4" in output  # workload.py's T4 rate
    parts, answers = notebook06_answers(open_run(run_dir)), entry["notebook06_answers_by_file"]
    assert answers["evaluation.csv"] == parts["evaluation, base and tuned"][0] == 2 * 73
    assert answers["sweep.csv"] == parts["sweep"][0] == 2 * 15 * 8  # models x settings x questions, 1 sample
    assert answers["retrieval.csv"] == parts["retrieval comparison"][0] and entry["notebook06_new_tokens"] > 0
    assert STEPS <= set(entry["step_s"]) and all(seconds > 0 for seconds in entry["step_s"].values())
