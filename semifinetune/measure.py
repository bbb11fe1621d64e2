"""Wall time and memory: GPU reserved/allocated where CUDA is present, process RSS otherwise."""

from __future__ import annotations

import time
from contextlib import contextmanager


def memory_snapshot() -> dict:
    """Current and peak memory in GiB, labelled with what was measured."""
    import psutil
    import torch

    snapshot = {"process_rss_gib": round(psutil.Process().memory_info().rss / 2**30, 3)}
    if torch.cuda.is_available():
        snapshot.update(
            gpu_allocated_gib=round(torch.cuda.memory_allocated() / 2**30, 3),
            gpu_reserved_gib=round(torch.cuda.memory_reserved() / 2**30, 3),
            gpu_peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3),
            gpu_peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3),
        )
    return snapshot


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


@contextmanager
def timed():
    """`with timed() as t: ...` then t["seconds"]."""
    result = {}
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = round(time.perf_counter() - start, 3)
