"""semifinetune: fine-tune DeepSeek-R1-Distill-Qwen-1.5B on your own questions and answers, and measure it.

Importing the package is cheap: torch, transformers, trl and unsloth load inside the functions that need them.
"""

from importlib import import_module

from .quiet import drop_known_noise

__version__ = "0.1.0"
drop_known_noise()

# public name -> module that defines it; resolved on first use so `import semifinetune` stays fast
_EXPORTS = {
    "RunConfig": "config",
    "ConfigError": "config",
    "make_config": "config",
    "load_config": "config",
    "save_config": "config",
    "environment_report": "env",
    "load_model": "models",
    "add_lora": "lora",
    "lora_parameter_report": "lora",
    "load_tokenizer": "models",
    "DataError": "data",
    "read_examples": "data",
    "validate_files": "data",
    "prepare_data": "data",
    "load_prepared": "data",
    "format_example": "formats",
    "seed_everything": "seeding",
    "memory_snapshot": "measure",
    "SamplingSettings": "generate",
    "evaluate_model": "evaluate",
    "compare_base_tuned": "evaluate",
    "index_training_pairs": "notes",
    "retrieve": "retrieval",
    "compare_retrieval": "compare",
    "retrieval_table": "compare",
    "retrieval_statement": "compare",
    "run_sweep": "sweep",
    "recommend_settings": "sweep",
    "export_run": "export",
    "push_to_hub": "export",
    "export_and_push": "publish",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'semifinetune' has no attribute {name!r}")
