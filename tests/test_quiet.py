"""Known third-party noise is dropped in one place; everything else those libraries log still shows."""

import subprocess
import sys

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"


def _stderr(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr


def test_the_bitsandbytes_kernels_warning_is_dropped_and_other_messages_are_not():
    """The record bitsandbytes 0.50 logs at import on CPUs with AVX512-BF16 (backends/cpu/ops.py), then another."""
    stderr = _stderr(
        "import logging, semifinetune\n"
        f"log = logging.getLogger({BNB_CPU_LOGGER!r})\n"
        "log.warning('Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
        "`pip install kernels` and the kernels >= 0.11.1', \"No module named 'kernels'\")\n"
        "log.error('a real problem')\n"
    )
    assert "kernels-community" not in stderr
    assert "a real problem" in stderr


def test_importing_the_libraries_writes_nothing_to_stderr():
    """What a notebook imports before its first output (on any CPU, with or without AVX512-BF16)."""
    assert _stderr("import semifinetune, bitsandbytes, peft, transformers, trl") == ""
