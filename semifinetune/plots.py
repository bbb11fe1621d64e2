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
    step the adapter keeps; one legend under the axes for both y axes; saved to path if given."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    train, held_out, validation = log.get("train_loss", []), log.get("eval_loss", []), log.get("validation_loss", [])
    ax.plot([e["step"] for e in train], [e["loss"] for e in train], marker=".", label="train loss")
    ax.plot([e["step"] for e in held_out], [e["loss"] for e in held_out], marker="o", label="held-out loss")
    if validation:
        ax.plot([e["step"] for e in validation], [e["loss"] for e in validation], marker="s", label="validation loss")
    kept = log.get("stats", {}).get("kept_step")
    if validation and kept is not None:
        ax.axvline(kept, color="grey", linestyle="--", linewidth=1, label=f"adapter kept: step {kept}")
    handles, labels = ax.get_legend_handles_labels()
    recall = log.get("validation_recall", [])
    if recall:  # what chooses the kept step, on its own 0-1 axis
        right = ax.twinx()
        right.plot([e["step"] for e in recall], [e["recall"] for e in recall], color="tab:red", marker="^",
                   label="validation recall (chooses)")
        right.set_ylim(0, 1)
        right.set_ylabel("validation keyword recall")
        more, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more, labels + more_labels
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per loss token")
    ax.set_title("Training and held-out loss")
    ax.grid(alpha=0.3)
    # One legend for both axes, below them: inside, two legends covered each other and the curves.
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    if path is not None:
        write_bytes_atomic(path, figure_bytes(fig, dpi=100))
    plt.close(fig)  # shown once, as the cell's value, not again by the inline backend
    return fig


# --- base vs tuned, and the retrieval 2 x 2 ---

BASE_VS_TUNED_PLOT = "base_vs_tuned.png"
RETRIEVAL_PLOT = "retrieval.png"
MODEL_COLORS = {"base": "tab:gray", "tuned": "tab:blue"}


def _bar_labels(ax, bars, texts) -> None:
    for bar, text in zip(bars, texts):
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9)


def plot_base_vs_tuned(run_dir: str | os.PathLike):
    """Base vs tuned on the held-out questions (evaluation.csv): correct answers of all, and the share that ended by
    themselves; saved as run_dir/base_vs_tuned.png."""
    import matplotlib.pyplot as plt

    from . import runs
    from .evaluate import MODELS, read_evaluation

    table = read_evaluation(run_dir)
    models = [m for m in MODELS if m in set(table["model"])]
    rows = {m: table[table["model"] == m] for m in models}
    questions = len(rows[models[0]])
    correct = [int(rows[m]["correct"].astype(bool).sum()) for m in models]
    eos = [float(rows[m]["eos_stop"].astype(bool).mean()) for m in models]
    colors = [MODEL_COLORS[m] for m in models]
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.2))
    _bar_labels(left, left.bar(models, correct, color=colors), [f"{c} of {questions}" for c in correct])
    left.set_ylim(0, questions * 1.15)
    left.set_ylabel("questions")
    left.set_title(f"Correct answers ({questions} held-out questions)", fontsize=10)
    _bar_labels(right, right.bar(models, eos, color=colors), [f"{e:.0%}" for e in eos])
    right.set_ylim(0, 1.15)
    right.set_ylabel("share of answers")
    right.set_title("Ended by itself (EOS-stop rate)", fontsize=10)
    fig.tight_layout()
    fig.savefig(runs.run_path(run_dir, BASE_VS_TUNED_PLOT), dpi=100)
    plt.close(fig)  # shown once, as the cell's value, not again by the inline backend
    return fig


def plot_retrieval(run_dir: str | os.PathLike):
    """The 2 x 2 (retrieval.csv): correct answers of base and tuned, each without notes, with the retrieved notes and
    with notes that lack the answer, one panel per question set; saved as run_dir/retrieval.png."""
    import matplotlib.pyplot as plt

    from . import runs
    from .compare import correct_counts, is_distractors, read_retrieval

    counts = correct_counts(read_retrieval(run_dir))
    fig, axes = plt.subplots(1, len(counts), figsize=(4.6 * len(counts), 3.6), squeeze=False)
    for ax, (name, cells) in zip(axes[0], counts.items()):
        # base, base + notes, base + distractors, then the same for tuned: read left to right
        labels = sorted((label for label in cells if label != "questions"),
                        key=lambda label: (label.split(" ")[0], "+" in label, is_distractors(label), label))
        questions = cells["questions"]
        colors = [MODEL_COLORS[label.split(" ")[0]] for label in labels]
        bars = ax.bar(range(len(labels)), [cells[label] for label in labels], color=colors, edgecolor="black", linewidth=0.5)
        for bar, label in zip(bars, labels):
            if "+" in label:
                bar.set_hatch(".." if is_distractors(label) else "//")  # with notes in the prompt: helpful, or not
        _bar_labels(ax, bars, [str(cells[label]) for label in labels])
        ax.set_xticks(range(len(labels)), [label.replace(" + ", "\n+ ").replace(" distractor", "\ndistractor")
                                           for label in labels], fontsize=8)
        ax.set_ylim(0, questions * 1.15)
        ax.set_ylabel("correct answers")
        ax.set_title(f"{name}: {questions} questions", fontsize=10)
    fig.suptitle("Fine-tune, retrieve, or both", fontsize=11)
    fig.tight_layout()
    fig.savefig(runs.run_path(run_dir, RETRIEVAL_PLOT), dpi=100)
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
