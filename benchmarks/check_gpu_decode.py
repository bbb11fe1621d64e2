"""GPU check of the sampling path on a 4-bit model with a LoRA adapter: CUDA-graphed static-cache decoding gives
the same greedy tokens with and without the dequantized copy, the adapter changes them, and how many agree with
transformers' generate() (random weights give near-flat distributions, where bf16 rounding can flip an argmax).

    python benchmarks/check_gpu_decode.py --model /tmp/r1-random
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    import torch

    from semifinetune import decode
    from semifinetune.config import make_config, parse_assignments
    from semifinetune.decode import dequantized_weights
    from semifinetune.generate import SamplingSettings, generate
    from semifinetune.lora import add_lora
    from semifinetune.models import load_model

    cfg = make_config("t4", {"model_name": args.model, **parse_assignments(args.set)})
    model, tokenizer = load_model(cfg)
    model = add_lora(model, cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # a trained adapter: B no longer zero
                param.normal_(std=0.05)
    questions = [f"What does step {i} of wafer processing do?" for i in range(12)]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=24)
    answers = {}
    ways = {"dequantized": (True, dequantized_weights), "4-bit": (True, no_copy), "generate": (False, dequantized_weights)}
    for which in ("tuned", "base"):
        with model.disable_adapter() if which == "base" else nullcontext():
            for way, (graphs, copy) in ways.items():
                decode.dequantized_weights = copy
                rows = generate(model, tokenizer, questions, greedy, batch_size=12, progress=False, cuda_graphs=graphs)
                answers[which, way] = [r.text for r in rows]
    decode.dequantized_weights = dequantized_weights
    for which in ("tuned", "base"):
        for other in ("4-bit", "generate"):
            same = sum(a == b for a, b in zip(answers[which, "dequantized"], answers[which, other]))
            print(f"{which}: graphed decoding with the copy equals {other} on {same} of {len(questions)} greedy answers")
    differ = sum(a != b for a, b in zip(answers["tuned", "dequantized"], answers["base", "dequantized"]))
    print(f"the adapter changes {differ} of {len(questions)} answers")


@contextmanager
def no_copy(model):
    yield False


if __name__ == "__main__":
    main()
