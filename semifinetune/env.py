"""What machine this is: GPU, memory, versions; and from that, the backend and the precision."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil

LIBRARIES = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth"]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _ram_gib() -> float:
    import psutil

    return round(psutil.virtual_memory().total / 2**30, 1)


def nvidia_driver_present() -> bool:
    """An NVIDIA driver is installed. Without one torch cannot see a GPU, so the report skips torch's 2 s import."""
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


def environment_report() -> dict:
    """GPU name, memory, compute capability, bf16, CUDA, CPUs, RAM and library versions."""
    report = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "cuda_available": False,
        "cuda_version": "none",
        "gpu_name": "none",
        "gpu_memory_gib": 0.0,
        "compute_capability": "none",
        "bf16_supported": False,
    }
    if nvidia_driver_present():
        import torch

        report["cuda_version"] = torch.version.cuda or "none"
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            report.update(
                cuda_available=True,
                gpu_name=props.name,
                gpu_count=torch.cuda.device_count(),
                gpu_memory_gib=round(props.total_memory / 2**30, 1),
                compute_capability=f"{props.major}.{props.minor}",
                # native bf16 only: a T4 (7.5) emulates it, slowly, and torch reports emulation as support by default
                bf16_supported=bool(torch.cuda.is_bf16_supported(including_emulation=False)),
            )
    report["versions"] = {name: _version(name) for name in LIBRARIES}
    report["unsloth_importable"] = unsloth_available()
    report["backend"] = choose_backend(report)
    report["precision"] = choose_precision(report)
    return report


def unsloth_available() -> bool:
    """Unsloth is installed; importing it is left to the loader (it costs ~30 s and needs a GPU)."""
    return importlib.util.find_spec("unsloth") is not None


def choose_backend(report: dict, requested: str = "auto") -> str:
    """transformers + bitsandbytes unless Unsloth is asked for.

    At the recipe's sizes a training step is host-bound; the transformers backend's CUDA-graphed step trains the
    guide's 100 steps in 11.4 s on an H200 where Unsloth at the same batch takes 60 s (BENCHMARKS.md). Unsloth
    stays available (backend='unsloth'), and its GGUF export writes the llama-quantize types where llama.cpp is not built.
    """
    return "transformers" if requested == "auto" else requested


AUTO_PROFILE = "auto"  # notebook 01's default: t4 on a CUDA GPU, cpu elsewhere


def choose_profile(report: dict, requested: str = AUTO_PROFILE) -> str:
    """'auto' becomes t4 where there is a CUDA GPU and cpu elsewhere; any other valid profile is kept as it is."""
    from .config import PROFILES, ConfigError

    if requested == AUTO_PROFILE:
        return "t4" if report["cuda_available"] else "cpu"
    if requested not in PROFILES:
        raise ConfigError(
            f"Unknown profile {requested!r}. Valid profiles: {AUTO_PROFILE} (t4 on a CUDA GPU, cpu elsewhere), {', '.join(PROFILES)}"
        )
    return requested


def choose_precision(report: dict, requested: str = "auto") -> str:
    """bf16 where the GPU supports it, fp16 on older GPUs such as the T4, fp32 on CPU; a request is checked."""
    from .config import ConfigError

    if requested == "auto":
        if not report["cuda_available"]:
            return "fp32"
        return "bf16" if report["bf16_supported"] else "fp16"
    if requested in ("fp16", "bf16") and not report["cuda_available"]:
        raise ConfigError(f"precision={requested!r} needs a CUDA GPU; on a CPU use precision='fp32' (or 'auto').")
    if requested == "bf16" and not report["bf16_supported"]:
        raise ConfigError(f"precision='bf16' but {report['gpu_name']} has no bf16 (a T4 has not): use 'fp16' or 'auto'.")
    return requested


def report_rows(report: dict) -> list[tuple[str, str]]:
    """The report as (name, value) rows for a table."""
    rows = [(key, str(value)) for key, value in report.items() if key != "versions"]
    rows += [(name, version) for name, version in report["versions"].items()]
    return rows


def format_report(report: dict) -> str:
    rows = report_rows(report)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# --- the CPU: which numeric kernels torch and bitsandbytes pick depends on its flags ---

# Flags that change results or the kernel chosen: bf16/fp16 arithmetic (bitsandbytes' 4-bit CPU kernel needs
# AVX512-BF16), AMX tiles (oneDNN's bf16 matmuls), AVX512/AVX2 (torch's vectorised CPU kernels); Arm's equivalents.
NUMERIC_FLAG = re.compile(r"avx512|amx|bf16|fp16|^avx2$|^fma$|vnni|^sve|i8mm|^asimd")


def parse_cpuinfo(text: str) -> dict:
    """Model name and numeric flags from /proc/cpuinfo's text (x86 'flags', Arm 'Features'), first processor."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    model = fields.get("model name") or fields.get("Model") or fields.get("CPU part") or platform.processor() or "unknown"
    return {"model": model, "flags": sorted(flag for flag in set(flags) if NUMERIC_FLAG.search(flag))}


def cpu_features() -> dict:
    """This machine's CPU model, core count and numeric flags, and the CPU paths torch and bitsandbytes choose."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            found = parse_cpuinfo(file.read())
    except OSError:  # macOS, Windows: no flags to read, the model from platform
        found = {"model": platform.processor() or platform.machine(), "flags": []}
    found["cores"] = os.cpu_count()
    import torch

    found["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    try:
        from bitsandbytes.functional import has_avx512bf16

        found["bitsandbytes_bf16_kernel"] = bool(has_avx512bf16())
    except ImportError:
        found["bitsandbytes_bf16_kernel"] = None
    return found


def cpu_line(features: dict | None = None) -> str:
    """One line: the CPU, its numeric flags and the kernels chosen from them."""
    f = features or cpu_features()
    kernel = {True: "yes", False: "no", None: "not installed"}[f["bitsandbytes_bf16_kernel"]]
    return (f"CPU {f['model']} ({f['cores']} cores); flags: {' '.join(f['flags']) or 'none read'}; torch CPU capability "
            f"{f['torch_cpu_capability']}; bitsandbytes bf16 4-bit kernel: {kernel}")
