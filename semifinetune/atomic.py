"""Writes that a crash cannot leave half done: a temporary file or folder beside the target, then a rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` in one rename; on any failure the old file stays and no .tmp is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as tmp:
        try:
            tmp.write(text)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)


@contextmanager
def staged(target: Path):
    """Write a folder as <target>.partial, then swap it in: a failed or interrupted write leaves the old one intact."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON through a temporary file and rename, so a crash never leaves half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_atomically(model, tokenizer, target: Path) -> None:
    """Save model (or adapter) and tokenizer into a sibling folder, then rename: a crash leaves no half folder."""
    with staged(Path(target)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
