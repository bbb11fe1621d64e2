"""Load the R1-1.5B architecture in 4-bit through one backend; print layer types, load time and memory as JSON.

    python benchmarks/gpu_load.py /tmp/r1-random transformers
    python benchmarks/gpu_load.py /tmp/r1-random unsloth
Run each backend in its own process so memory figures do not mix.
"""

from __future__ import annotations

import json
import sys
import time

start = time.perf_counter()
from semifinetune.config import make_config  # noqa: E402
from semifinetune.env import environment_report  # noqa: E402
from semifinetune.measure import memory_snapshot, timed  # noqa: E402
from semifinetune.models import layer_precision_report, load_model  # noqa: E402

path, backend = sys.argv[1], sys.argv[2]
cfg = make_config("t4", {"model_name": path, "backend": backend})
report = environment_report()
before = memory_snapshot()
with timed() as load:
    model, tokenizer = load_model(cfg, report)
result = {
    "backend": model.semifinetune_backend,
    "gpu": report["gpu_name"],
    "versions": report["versions"],
    "load_seconds": load["seconds"],
    "process_seconds_to_loaded": round(time.perf_counter() - start, 1),
    "memory_before": before,
    "memory_after": memory_snapshot(),
    "layers": layer_precision_report(model),
    "parameters_stored": sum(p.numel() for p in model.parameters()),
}
print(json.dumps(result, indent=1))
