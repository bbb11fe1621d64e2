"""Third-party log messages that are noise wherever this project runs, dropped in one place.

Only the messages listed are dropped; everything else those loggers say (errors included) still shows.
"""

from __future__ import annotations

import logging
import os

# logger name -> the start of each message dropped
NOISE = {
    # bitsandbytes 0.50 on a CPU with AVX512-BF16, at import: an optional faster CPU kernel for 4-bit layers could not
    # be fetched from the Hugging Face hub (`kernels` not installed). The project never runs 4-bit layers on a CPU, and
    # the message on stderr made nbval fail notebooks on such CPUs.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}


class _DropNoise(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def drop_known_noise() -> None:
    """Filter NOISE out of its loggers (before the libraries import: a filter can wait on a logger's name)."""
    for name, prefixes in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise(prefixes))


def progress_bars_off() -> bool:
    """TQDM_DISABLE is set (the notebooks runner, CI): then the project's own bars stay off too. tqdm's environment
    setting changes only its default, and generate() passes `disable` explicitly."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")
