"""Build DeepSeek-R1-Distill-Qwen-1.5B's architecture with random weights, offline, for speed and memory runs.

Speed and memory do not depend on weight values, so this stands in for the real checkpoint on a machine
without hub access. Losses from random weights are only comparable with each other.

    python benchmarks/r1_arch.py /tmp/r1-random
"""

from __future__ import annotations

import sys
from pathlib import Path


def build_r1_random(target: str | Path) -> Path:
    """Save a bf16 random-weight R1-1.5B (1,777,088,000 parameters) with the tiny R1-style tokenizer."""
    import torch
    from transformers import Qwen2ForCausalLM

    from semifinetune.models import _tiny_corpus, build_tiny_tokenizer, r1_distill_config

    target = Path(target)
    if (target / "config.json").exists():
        return target
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(r1_distill_config()).to(torch.bfloat16)
    tokenizer = build_tiny_tokenizer(_tiny_corpus())
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


if __name__ == "__main__":
    print(build_r1_random(sys.argv[1] if len(sys.argv) > 1 else "/tmp/r1-random"))
