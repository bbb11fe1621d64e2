"""Writes that a crash or a full disk cannot leave half done: temporary files or a folder beside the target, then a
rename. The bytes are rendered first, so the free space is checked against their size before anything is written
(safety.DiskSpaceError); a disk that fills anyway stops with a DiskFullError naming the folder and the space, the
old results intact and no temporary file left. Imports nothing from the package: config saves through it."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota
# How libraries that write through their own code report those: safetensors (Rust) as SafetensorError text.
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")
FULL_BELOW = 2**20  # torch.save's zip writer reports a full disk as "unexpected pos": the disk itself tells
BLOCK_MARGIN = 64 * 2**10  # file-system blocks and metadata beyond the bytes themselves


class DiskFullError(OSError):
    """The disk filled during a write (errno ENOSPC); the message names the folder, the space needed and free."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:  # the words alone, without OSError's "[Errno 28]"
        return self.strerror


def free_bytes(folder: str | os.PathLike) -> int:
    """Free bytes on the disk that holds `folder` (or its nearest existing parent)."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    return shutil.disk_usage(existing).free


def size_text(count: float) -> str:
    """Bytes in GiB from 1 GiB up, else MiB: 0.27 GiB of checkpoints, 0.15 MiB of CSV."""
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.2f} MiB"


def is_disk_full(err: BaseException, folder) -> bool:
    """The write failed because the disk holding `folder` (or the quota) is full. Call it before removing what the
    failed write left: that is what filled the disk."""
    if isinstance(err, OSError) and err.errno in NO_SPACE:
        return True
    if any(text in str(err) for text in NO_SPACE_TEXT):
        return True
    return isinstance(err, (OSError, RuntimeError)) and free_bytes(folder) < FULL_BELOW


def write_files_atomic(files: dict, what: str = "") -> None:
    """Replace each path with its bytes, all or none: every file is written to a temporary file first, and only
    when all are written are they renamed over the old ones (a sweep's tables, its recommendation and its plot stay
    one set). A disk without room for them stops before anything is written."""
    files = {Path(path): data for path, data in files.items()}
    folders = {path.parent for path in files}
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        size = sum(len(data) for path, data in files.items() if path.parent == folder)
        if free_bytes(folder) < size + BLOCK_MARGIN:
            raise DiskFullError(space_message(folder, what or ", ".join(p.name for p in files), size, filled=False))
    written = {}
    try:
        for path, data in files.items():
            written[path] = _write_temporary(path, data)
    except BaseException as err:
        full = is_disk_full(err, next(iter(folders)))
        for temporary in written.values():
            with suppress(FileNotFoundError):
                os.unlink(temporary)
        if full:
            path = next(p for p in files if p not in written)
            raise disk_filled(path.parent, what or path.name, needed=sum(len(d) for d in files.values())) from None
        raise
    for path, temporary in written.items():
        os.replace(temporary, path)


def _write_temporary(path: Path, data: bytes) -> str:
    """data in a new temporary file beside path, on disk (fsync: a power cut after the rename keeps the new bytes)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return temporary


def disk_filled(folder: Path, what: str, needed: int | None = None, written: int | None = None) -> DiskFullError:
    """The error for a write the disk could not hold: the folder, the space it needed (or had taken when the disk
    filled) and the space free now."""
    return DiskFullError(space_message(folder, what, needed, written=written))


def space_message(folder: Path, what: str, needed: int | None, written: int | None = None, filled: bool = True) -> str:
    need = f"it needs about {size_text(needed)}" if needed is not None else f"it filled after {size_text(written or 0)}"
    event = "filled while writing" if filled else "has no room for"
    return (f"The disk holding {folder} {event} {what}: {need}, and {size_text(free_bytes(folder))} is free. Nothing "
            "was replaced: the earlier results are as they were. Free some space and run the step again.")


def write_bytes_atomic(path: str | os.PathLike, data: bytes, what: str = "") -> None:
    """Replace `path` with `data` in one rename; on any failure the old file stays and no .tmp is left."""
    write_files_atomic({path: data}, what)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` (UTF-8) in one rename; on any failure the old file stays and no .tmp is left."""
    write_bytes_atomic(path, text.encode("utf-8"))


def json_bytes(data) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON through a temporary file and rename, so a crash never leaves half a file."""
    write_bytes_atomic(path, json_bytes(data))


def csv_bytes(frame) -> bytes:
    """A table as pandas' to_csv writes it to a file (no index)."""
    return frame.to_csv(index=False).encode("utf-8")


def figure_bytes(fig, **savefig) -> bytes:
    """A matplotlib figure as PNG bytes (savefig's options: dpi, bbox_inches)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig)
    return buffer.getvalue()


@contextmanager
def staged(target: Path):
    """Write a folder as <target>.partial, then swap it in: a failed or interrupted write leaves the old one intact,
    and a full disk stops with a DiskFullError naming the folder."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException as err:
        written = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        full = is_disk_full(err, staging)
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise disk_filled(target.parent, target.name, written=written) from None
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def save_atomically(model, tokenizer, target: Path) -> None:
    """Save model (or adapter) and tokenizer into a sibling folder, then rename: a crash leaves no half folder."""
    with staged(Path(target)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
