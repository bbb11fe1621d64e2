"""Seed first, in one place: Python, NumPy and torch (CPU and CUDA)."""


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
