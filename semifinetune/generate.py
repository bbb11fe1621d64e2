"""Batched generation through the chat template: left padding, EOS stop, finish reasons, token counts, timing."""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass

from .batch_plan import default_batch_size
from .config import ConfigError


class GenerationMemoryError(ConfigError):
    """Even one answer at a time does not fit in GPU memory; the message names what to lower."""


@dataclass
class SamplingSettings:
    temperature: float = 0.6  # 0 = greedy; DeepSeek recommends 0.6 for R1
    top_p: float = 0.95
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0  # 1.0 = off


@dataclass
class Generation:
    prompt: str
    text: str  # everything generated, up to (not including) the end-of-sequence token
    reasoning: str | None  # None: the model has no reasoning block (not applicable)
    answer: str
    think_closed: bool | None  # None: not applicable
    new_tokens: int  # generated tokens, the end-of-sequence token included, padding excluded
    finish_reason: str  # "eos": the model stopped itself; "length": cut at max_new_tokens
    seconds: float  # this row's share of its batch's wall time, so the rows' seconds add up to wall time

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def generate(
    model,
    tokenizer,
    questions: list[str],
    settings: SamplingSettings | list[SamplingSettings],
    seed: int = 42,
    batch_size: int | None = None,
    progress: bool = True,
    cuda_graphs: bool = True,
    streamer=None,
) -> list[Generation]:
    """Answers to `questions` through the chat template, batched with left padding, in the questions' order.

    `settings` is one SamplingSettings for every question, or one per question: rows whose temperature or top_p
    differ share a batch (a whole sweep grid decodes together); rows differing in max_new_tokens or
    repetition_penalty do not. With `cuda_graphs` on a CUDA GPU (transformers backend, no repetition penalty)
    decoding runs over a static KV cache with the step replayed as a CUDA graph. `batch_size` None: as many rows
    as fit (batch_plan.default_batch_size). `streamer` (transformers' put/end interface, e.g.
    streaming.answer_streamer) receives the tokens as they are chosen, on either decoding path; streamers take one
    row, so then one question only.
    """
    import torch
    from tqdm.auto import tqdm

    from .formats import chat_prompt
    from .quiet import progress_bars_off

    per_row = settings if isinstance(settings, list) else [settings] * len(questions)
    if len(per_row) != len(questions):
        raise ValueError(f"{len(per_row)} settings for {len(questions)} questions: give one, or one per question.")
    if streamer is not None and len(questions) != 1:
        raise ValueError(f"A streamer shows one answer at a time: got {len(questions)} questions, give one.")
    rendered = {q: chat_prompt(tokenizer, q) for q in dict.fromkeys(questions)}  # a sweep repeats each question
    prompts = [rendered[q] for q in questions]
    # Grouped by what one generate() call must share; longest first within a group: rows of like length share a
    # batch (less padding), and an OOM shows up on the first batch.
    order = sorted(range(len(prompts)), key=lambda i: (_batch_key(per_row[i]), -len(prompts[i])))
    results: list[Generation | None] = [None] * len(prompts)
    if batch_size is None:
        batch_size = default_batch_size(model, _longest_row_tokens(tokenizer, prompts, per_row))
    start, size = 0, max(1, batch_size)
    tokens, started = 0, time.perf_counter()
    bar_off = not progress or progress_bars_off()
    decoders = _DecoderSlot()
    with _inference_mode(model, tokenizer), _weights_for_decoding(model, per_row, cuda_graphs), \
            tqdm(total=len(prompts), desc="generate", disable=bar_off) as bar:
        while start < len(order):
            key = _batch_key(per_row[order[start]])
            left = sum(1 for i in order[start:] if _batch_key(per_row[i]) == key)
            rows = order[start : start + _even_batch(left, size)]
            try:
                generated = _generate_batch(model, tokenizer, [prompts[i] for i in rows], [per_row[i] for i in rows],
                                            seed, cuda_graphs, streamer, decoders)
            except torch.OutOfMemoryError:
                decoders.decoder = None
                size = _smaller_batch(size, per_row[rows[0]])
                continue
            for i, row in zip(rows, generated):
                results[i] = row
            start += len(rows)
            tokens += sum(row.new_tokens for row in generated)
            bar.set_postfix_str(f"{tokens / (time.perf_counter() - started):,.0f} tokens/s", refresh=False)
            bar.update(len(rows))
    return results


@contextmanager
def _weights_for_decoding(model, settings: list[SamplingSettings], cuda_graphs: bool):
    """dense_weights.dequantized_weights for the whole call where any row decodes on the static path: the recorded
    graphs read the copy, so it must outlive every batch that replays them."""
    from .dense_weights import dequantized_weights

    if any(uses_static_decode(model, [s], cuda_graphs) for s in {_batch_key(s): s for s in settings}.values()):
        with dequantized_weights(model):
            yield
    else:
        yield


def _even_batch(rows_left: int, size: int) -> int:
    """The next batch's rows when a group has `rows_left` rows at most `size` a batch, split evenly: 3,285 rows at
    1,024 decode as 4 x 822, not 3 x 1,024 + 213 (a batch's steps cost about the same at 213 rows as at 822)."""
    batches = -(-rows_left // size)
    return -(-rows_left // batches)


def _longest_row_tokens(tokenizer, prompts: list[str], settings: list[SamplingSettings]) -> int:
    """The most cache slots a row can need: the longest prompt in tokens plus the longest answer allowed."""
    prompt_tokens = tokenizer(sorted(set(prompts)), add_special_tokens=False)["input_ids"]
    return max(map(len, prompt_tokens), default=0) + max((s.max_new_tokens for s in settings), default=0)


def _batch_key(settings: SamplingSettings) -> tuple:
    """What every row of one batch shares: the answer length and the repetition penalty."""
    return (settings.max_new_tokens, settings.repetition_penalty)


@contextmanager
def _inference_mode(model, tokenizer):
    """eval(), left padding and torch.inference_mode for the call; the caller's state restored after."""
    import torch

    if getattr(model, "semifinetune_backend", "transformers") == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)  # Unsloth's fast decoding path (2x on a T4)
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only: new tokens must follow each prompt directly
    try:
        with torch.inference_mode():
            yield
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()


def _smaller_batch(size: int, settings: SamplingSettings) -> int:
    """Half the batch after a CUDA out-of-memory error; at batch 1 say what to lower."""
    import torch

    torch.cuda.empty_cache()
    if size == 1:
        total = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0
        raise GenerationMemoryError(
            f"Out of GPU memory generating a single answer ({total:.1f} GiB GPU, max_new_tokens="
            f"{settings.max_new_tokens}). Lower max_new_tokens (e.g. --set max_new_tokens="
            f"{max(16, settings.max_new_tokens // 2)}) or max_seq_length, or restart the runtime to free GPU memory."
        ) from None
    print(f"Out of GPU memory at batch size {size}: retrying with batch size {size // 2}.")
    return size // 2


def eos_token_ids(model, tokenizer) -> set[int]:
    """The ids that end an answer: the tokenizer's eos and the model's generation config eos (an int or a list)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}


def sampling_kwargs(settings: SamplingSettings) -> dict:
    """model.generate() arguments for these settings; temperature 0 means greedy (no sampling arguments)."""
    kwargs = {"max_new_tokens": settings.max_new_tokens, "use_cache": True}  # no KV cache: ~18x slower on CPU
    if settings.temperature > 0:
        # top_k=0: transformers would otherwise add top_k=50, which DeepSeek's recommendation does not have.
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    else:
        kwargs["do_sample"] = False
    if settings.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = settings.repetition_penalty
    return kwargs


def uses_static_decode(model, settings: list[SamplingSettings], cuda_graphs: bool) -> bool:
    """The static-cache CUDA-graph decoding applies: a CUDA model on the transformers backend, no repetition penalty."""
    return (
        cuda_graphs
        and model.device.type == "cuda"
        and getattr(model, "semifinetune_backend", "transformers") == "transformers"
        and all(s.repetition_penalty == 1.0 for s in settings)
    )


class _DecoderSlot:
    """The decode.StaticDecoder a generate() call's batches share while they fit it."""

    def __init__(self):
        self.decoder = None

    def for_batch(self, model, rows: int, prompt_len: int, max_new_tokens: int):
        from .decode import StaticDecoder

        if self.decoder is None or not self.decoder.fits(rows, prompt_len, max_new_tokens):
            self.decoder = None  # the old cache and graphs freed before the new ones are made
            self.decoder = StaticDecoder(model, rows, prompt_len, max_new_tokens)
        return self.decoder


def _generate_batch(
    model, tokenizer, prompts: list[str], settings: list[SamplingSettings], seed: int, cuda_graphs: bool, streamer=None,
    decoders: _DecoderSlot | None = None,
) -> list[Generation]:
    from .decode import row_sampling_processor
    from .formats import opens_think_block
    from .parsing import parse_output
    from .seeding import seed_everything

    # The chat template writes its own BOS: adding specials again would double it.
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    eos_ids = eos_token_ids(model, tokenizer)
    temperatures, top_ps = [s.temperature for s in settings], [s.top_p for s in settings]
    seed_everything(seed)  # each batch from the same seed: a rerun with the same batches gives the same text
    started = time.perf_counter()
    if uses_static_decode(model, settings, cuda_graphs):
        decoder = (decoders or _DecoderSlot()).for_batch(model, len(prompts), encoded["input_ids"].shape[1],
                                                        settings[0].max_new_tokens)
        new_ids = decoder.decode(encoded["input_ids"], encoded["attention_mask"], temperatures, top_ps, eos_ids,
                                 tokenizer.pad_token_id, streamer=streamer)
    else:
        kwargs = sampling_kwargs(settings[0])
        if len(set(zip(temperatures, top_ps))) > 1:  # mixed settings: transformers' warpers off, ours per row
            kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                          logits_processor=[row_sampling_processor(temperatures, top_ps)])
        output = model.generate(**encoded, **kwargs, eos_token_id=sorted(eos_ids), pad_token_id=tokenizer.pad_token_id,
                                streamer=streamer)
        new_ids = output[:, encoded["input_ids"].shape[1] :]
    seconds = (time.perf_counter() - started) / len(prompts)
    stops = _first_stops(new_ids, eos_ids)
    new_ids = new_ids.tolist()
    # Specials kept: R1's `</think>` is a special token in some tokenizers and the parser needs it.
    texts = decoded_texts(tokenizer, [ids if stop is None else ids[:stop] for ids, stop in zip(new_ids, stops)])
    rows = []
    for prompt, ids, stop, text in zip(prompts, new_ids, stops, texts):
        parsed = parse_output(text, opens_think_block(prompt))
        rows.append(
            Generation(
                prompt=prompt,
                text=text,
                reasoning=parsed.reasoning,
                answer=parsed.answer,
                think_closed=parsed.think_closed,
                new_tokens=len(ids) if stop is None else stop + 1,
                finish_reason="length" if stop is None else "eos",
                seconds=round(seconds, 4),
            )
        )
    return rows


def _first_stops(new_ids, eos_ids) -> list:
    """Each row's first end-of-sequence position in `new_ids` (rows, tokens), or None: found on the tensor's device."""
    import torch

    stops = torch.isin(new_ids, torch.tensor(sorted(eos_ids), dtype=new_ids.dtype, device=new_ids.device))
    first = torch.where(stops.any(dim=1), stops.int().argmax(dim=1), -1).tolist()
    return [None if k < 0 else k for k in first]


def decoded_texts(tokenizer, id_lists: list[list[int]]) -> list[str]:
    """`tokenizer.decode(ids, skip_special_tokens=False)` of each list. A fast tokenizer that decodes as its Rust
    backend does (its class overrides no decoding, no space clean-up) decodes them all in one backend call, without
    transformers' per-token type checks (a sweep decodes some 3.5 M tokens); any other decodes each list."""
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, PreTrainedTokenizerFast) and not tokenizer.clean_up_tokenization_spaces:
        classes = type(tokenizer).__mro__
        own = classes[:classes.index(PreTrainedTokenizerFast)]
        if not any(name in vars(cls) for cls in own for name in ("decode", "_decode")):
            return tokenizer.backend_tokenizer.decode_batch(id_lists, skip_special_tokens=False)
    return [tokenizer.decode(ids, skip_special_tokens=False) for ids in id_lists]
