"""An ipywidgets playground: one prompt, sampling sliders, retrieval on or off, base and tuned answers side by side,
each shown token by token as it is generated (interactive sessions only; streaming.py says how)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable

from . import runs

# Parent processes that run notebooks headless: nothing would ever click the widgets there.
HEADLESS_RUNNERS = ("papermill", "pytest", "nbval", "nbconvert", "nbclient")


def interactive_session(interactive: bool = True) -> tuple[bool, str]:
    """(True, "") where widgets can be used: asked for, inside a Jupyter kernel, not started by a headless runner."""
    if not interactive:
        return False, "interactive=False (papermill runs set it)"
    try:
        from IPython import get_ipython
    except ImportError:
        return False, "IPython is not installed"
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return False, "not running in a Jupyter kernel"
    runner = _headless_parent()
    if runner:
        return False, f"the kernel was started by {runner}, not by a notebook frontend"
    return True, ""


def _headless_parent() -> str:
    """The headless runner that started this kernel (papermill, pytest/nbval, nbconvert), or ""."""
    import psutil

    try:
        command = " ".join(psutil.Process(os.getppid()).cmdline()).lower()
    except (psutil.Error, OSError):
        return ""
    return next((name for name in HEADLESS_RUNNERS if name in command), "")


def describe(generation) -> str:
    """One answer as the playground shows it: the answer, then reasoning (if any) and how generation ended."""
    lines = [generation.answer or "(no answer: the think block never closed)"]
    if generation.reasoning is not None:
        lines += ["", "--- reasoning ---", generation.reasoning]
    think = "n/a" if generation.think_closed is None else ("closed" if generation.think_closed else "not closed")
    lines += ["", f"[{generation.finish_reason}, {generation.new_tokens} tokens, {generation.seconds:.1f} s, think block {think}]"]
    return "\n".join(lines)


def describe_notes(notes: list[dict]) -> str:
    """The retrieved training pairs as the playground lists them: rank, BM25 score, question and answer."""
    if not notes:
        return "no notes (retrieval off, or no note scored above the run's retrieval_floor): the prompt is the question alone"
    lines = [f"{len(notes)} retrieved {'note' if len(notes) == 1 else 'notes'} (BM25 over train_file), in the prompt of both models:"]
    for rank, note in enumerate(notes, start=1):
        lines += [f"{rank}. [score {note['score']:.2f}] Q: {note['input']}", f"   A: {note['output']}"]
    return "\n".join(lines)


def answer_both(model, tokenizer, index, question: str, settings, k: int, cfg,
                on_notes: Callable[[list[dict]], None] | None = None,
                on_text: Callable[[str, str], None] | None = None, floor: float = 0.0) -> tuple[list[dict], dict]:
    """One click: the top k notes for the question (k 0: none; none where the best scores under floor, as in
    evaluation), and base and tuned answers to it with those notes.

    `on_notes(notes)` is called before generating; `on_text(which, piece)` as each answer is generated, base first.
    The answers are the same with or without on_text: the streamer only watches the tokens generate() chooses.
    """
    from .evaluate import MODELS, as_model
    from .generate import eos_token_ids, generate
    from .notes import above_floor
    from .retrieval import retrieve, with_notes
    from .streaming import answer_streamer

    (notes,) = above_floor(retrieve(index, [question], k), floor)
    if on_notes is not None:
        on_notes(notes)
    answers = {}
    for which in MODELS:
        streamer = None
        if on_text is not None:
            streamer = answer_streamer(tokenizer, functools.partial(on_text, which), eos_token_ids(model, tokenizer))
        with as_model(model, which):
            (answers[which],) = generate(model, tokenizer, [with_notes(question, notes)], settings, seed=cfg.seed,
                                         progress=False, cuda_graphs=cfg.cuda_graphs, streamer=streamer)
    return notes, answers


def starting_settings(run_dir: str | os.PathLike, cfg) -> dict:
    """The sweep's recommended temperature/top_p where it exists, else the run's own settings."""
    path = runs.run_path(run_dir, runs.RECOMMENDED)
    start = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}
    if path.exists():
        recommended = json.loads(path.read_text(encoding="utf-8"))
        start.update({key: recommended[key] for key in start if key in recommended})
    # Notes: the run's retrieval_k where set, else the 2 x 2's k, switched off until the box is ticked.
    return {**start, "retrieval": cfg.retrieval_k > 0, "notes_k": cfg.retrieval_k or max(cfg.retrieval_compare_k, 1)}


def playground(run_dir: str | os.PathLike, interactive: bool = True):
    """The widget in an interactive session; elsewhere one printed line and None."""
    ok, why = interactive_session(interactive)
    if not ok:
        print(f"Playground skipped: {why}.")
        return None
    import ipywidgets as w

    from .evaluate import MODELS, load_base_and_tuned, sample_question
    from .generate import SamplingSettings
    from .notes import index_training_pairs, score_floor
    from .runs import open_run

    cfg = open_run(run_dir)
    model, tokenizer = load_base_and_tuned(cfg, run_dir)
    index = index_training_pairs(cfg)  # train_file only, as in evaluation
    floor = score_floor(cfg, index, run_dir)
    start = starting_settings(run_dir, cfg)
    prompt = w.Textarea(value=sample_question(cfg, run_dir), description="prompt", layout=w.Layout(width="95%", height="4em"))
    temperature = w.FloatSlider(value=start["temperature"], min=0.0, max=1.5, step=0.05, description="temperature")
    top_p = w.FloatSlider(value=start["top_p"], min=0.05, max=1.0, step=0.05, description="top_p")
    max_new = w.IntSlider(value=start["max_new_tokens"], min=16, max=max(cfg.max_seq_length, 16), step=16, description="max_new_tokens")
    retrieval = w.Checkbox(value=start["retrieval"], description="retrieval: training pairs in the prompt")
    notes_k = w.IntSlider(value=start["notes_k"], min=1, max=min(10, len(index.pairs)), description="notes k")
    button = w.Button(description="Generate", button_style="primary")
    notes_out = w.Output(layout=w.Layout(width="95%", border="1px solid #ccc", padding="4px"))
    outputs = {which: w.Output(layout=w.Layout(width="48%", border="1px solid #ccc", padding="4px")) for which in MODELS}

    def show_notes(notes):
        notes_out.clear_output()
        with notes_out:
            print(describe_notes(notes))
        for which in MODELS:
            outputs[which].clear_output()
            with outputs[which]:
                print(f"{which.upper()}\n")

    def show_piece(which, piece):
        with outputs[which]:
            print(piece, end="", flush=True)

    def on_click(_):
        settings = SamplingSettings(temperature.value, top_p.value, max_new.value, cfg.repetition_penalty)
        k = notes_k.value if retrieval.value else 0
        _, answers = answer_both(model, tokenizer, index, prompt.value, settings, k, cfg, show_notes, show_piece, floor)
        # The raw text streamed in order (reasoning, then answer); once both are done each box shows the answer
        # first, with its reasoning and how it ended, as describe() lays it out.
        for which in MODELS:
            outputs[which].clear_output()
            with outputs[which]:
                print(f"{which.upper()}\n\n{describe(answers[which])}")

    button.on_click(on_click)
    return w.VBox([prompt, w.HBox([temperature, top_p, max_new]), w.HBox([retrieval, notes_k]), button, notes_out,
                   w.HBox(list(outputs.values()))])
