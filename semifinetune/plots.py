"""Figures the notebooks show; each function saves its PNG into the run directory and returns the figure."""

from __future__ import annotations

import os

from .atomic import figure_bytes, write_bytes_atomic


def token_length_histogram(run_dir: str | os.PathLike):
    """Token lengths of the prepared train and eval sets against max_seq_length; saved as run_dir/data/token_lengths.png."""
    import matplotlib.pyplot as plt

    from . import runs
    from .data import HISTOGRAM_FILE, read_prepared
    from .runs import open_run

    cfg = open_run(run_dir)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split in ("train", "eval"):
        lengths = [len(row["input_ids"]) for row in read_prepared(run_dir, split)]
        ax.hist(lengths, bins=30, alpha=0.6, label=f"{split} ({len(lengths)} examples)")
    ax.axvline(cfg.max_seq_length, color="red", linestyle="--", label=f"max_seq_length {cfg.max_seq_length}")
    ax.set_xlabel(f"tokens per example ({cfg.format} format)")
    ax.set_ylabel("examples")
    ax.set_title("Token lengths after formatting")
    ax.legend()
    fig.tight_layout()
    write_bytes_atomic(runs.run_path(run_dir, runs.DATA) / HISTOGRAM_FILE, figure_bytes(fig, dpi=100))
    plt.close(fig)  # shown once, as the cell's value, not again by the inline backend
    return fig


def plot_losses(log: dict, path: str | os.PathLike | None = None):
    """Train loss per logging step, validation and held-out loss per eval step (train_log.json's lists), and the
    step the adapter keeps; saved to path if given."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    train, held_out, validation = log.get("train_loss", []), log.get("eval_loss", []), log.get("validation_loss", [])
    ax.plot([e["step"] for e in train], [e["loss"] for e in train], marker=".", label="train loss")
    ax.plot([e["step"] for e in held_out], [e["loss"] for e in held_out], marker="o", label="held-out loss")
    if validation:
        ax.plot([e["step"] for e in validation], [e["loss"] for e in validation], marker="s", label="validation loss")
    kept = log.get("stats", {}).get("kept_step")
    recall = log.get("validation_recall", [])
    if recall:  # what chooses the kept step, on its own 0-1 axis
        right = ax.twinx()
        right.plot([e["step"] for e in recall], [e["recall"] for e in recall], color="tab:red", marker="^",
                   label="validation recall (chooses)")
        right.set_ylim(0, 1)
        right.set_ylabel("validation keyword recall")
        right.legend(loc="upper center", fontsize=8)
    if validation and kept is not None:
        ax.axvline(kept, color="grey", linestyle="--", linewidth=1, label=f"adapter kept: step {kept}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per loss token")
    ax.set_title("Training and held-out loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        write_bytes_atomic(path, figure_bytes(fig, dpi=100))
    plt.close(fig)  # shown once, as the cell's value, not again by the inline backend
    return fig


# --- the sampling sweep ---

SWEEP_HEATMAP_METRICS = {"recall": "mean keyword recall", "eos_rate": "EOS-stop rate"}
HEATMAP_SAVE = {"dpi": 100, "bbox_inches": "tight"}  # the colour bars sit outside the axes


def plot_sweep_heatmaps(summary, path: str | os.PathLike | None = None):
    """Recall and EOS-stop rate over temperature x top_p, one column per model (summarize_sweep's table); saved to path if given."""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(summary["model"]))
    fig, axes = plt.subplots(len(SWEEP_HEATMAP_METRICS), len(models), figsize=(3.6 * len(models) + 1, 6.4), squeeze=False, layout="constrained")
    for row, (metric, label) in enumerate(SWEEP_HEATMAP_METRICS.items()):
        for col, model in enumerate(models):
            # Other grid axes (repetition penalty, max_new_tokens), if swept, are averaged over.
            grid = summary[summary["model"] == model].pivot_table(index="temperature", columns="top_p", values=metric, aggfunc="mean")
            ax = axes[row][col]
            image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            for (i, j), value in _cells(grid.to_numpy()):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
            ax.set_xticks(range(len(grid.columns)), [f"{p:g}" for p in grid.columns])
            ax.set_yticks(range(len(grid.index)), [f"{t:g}" for t in grid.index])
            ax.set_xlabel("top_p")
            ax.set_ylabel("temperature")
            ax.set_title(f"{model}: {label}", fontsize=10)
        fig.colorbar(image, ax=list(axes[row]), shrink=0.8)
    if path is not None:
        write_bytes_atomic(path, figure_bytes(fig, **HEATMAP_SAVE))
    plt.close(fig)  # shown once, as the cell's value, not again by the inline backend
    return fig


def _cells(values):
    import numpy as np

    return [((i, j), values[i, j]) for i, j in np.ndindex(values.shape) if not np.isnan(values[i, j])]
