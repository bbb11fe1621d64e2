"""The two text formats (the guide's layout, the model's chat template) and their token-level loss masks."""

from __future__ import annotations

from .config import RunConfig

GUIDE_REASONING = "Let me think about this step by step."
GUIDE_LEAD_IN = "Based on my analysis above, here's the answer:"
GUIDE_END_TOKEN = "<|end_of_text|>"  # what the guide wrote: Llama-3's end token, not R1's


def chat_prompt(tokenizer, question: str, context: list[dict] | None = None) -> str:
    """The model's own chat template up to where the answer starts (R1: ending in `<think>\\n`); `context` is the
    system message and earlier turns of a multi-turn example."""
    messages = list(context or []) + [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def opens_think_block(prompt: str) -> bool:
    """R1's generation prompt already opens the reasoning block, so outputs hold only `</think>`."""
    return prompt.endswith("<think>\n")


def chat_completion(tokenizer, example: dict, prompt: str) -> str:
    """The assistant's turn. For R1 the reasoning block is kept: the stock template would delete it."""
    answer = example["output"]
    if opens_think_block(prompt):
        reasoning = example.get("reasoning", "")  # empty block: R1's own shape when no reasoning is needed
        return f"{reasoning}\n</think>\n\n{answer}{tokenizer.eos_token}"
    return f"{answer}{tokenizer.eos_token}"


def guide_text(example: dict, end_token: str) -> tuple[str, str]:
    """The guide's layout as (question part, the rest), ending in `end_token`."""
    answer = example["output"]
    prompt = f"{example['input']}\n\n"
    completion = f"<think>\n{GUIDE_REASONING}\n\n{answer}\n</think>\n\n{GUIDE_LEAD_IN}\n{answer}{end_token}"
    return prompt, completion


def format_example(tokenizer, example: dict, cfg: RunConfig) -> dict:
    """One example as {"prompt", "completion"} text in the configured format."""
    if cfg.format == "guide":
        prompt, completion = guide_text(example, tokenizer.eos_token)  # the real eos, not the guide's string
    else:
        prompt = chat_prompt(tokenizer, example["input"], example.get("context"))
        completion = chat_completion(tokenizer, example, prompt)
    return {"prompt": prompt, "completion": completion}


def loss_on_completion_only(cfg: RunConfig) -> bool:
    """Chat trains on the answer only; the guide format on the whole text, as the guide does."""
    if cfg.loss_on == "auto":
        return cfg.format == "chat"
    return cfg.loss_on == "completion"


def tokenize_example(tokenizer, formatted: dict, completion_only: bool) -> dict:
    """input_ids and completion_mask (1 where a token carries loss), exactly what the trainer sees."""
    # The chat template writes its own BOS; the guide's plain text gets the tokenizer's usual specials.
    has_bos_text = bool(tokenizer.bos_token) and formatted["prompt"].startswith(tokenizer.bos_token)
    prompt_ids = tokenizer(formatted["prompt"], add_special_tokens=not has_bos_text)["input_ids"]
    completion_ids = tokenizer(formatted["completion"], add_special_tokens=False)["input_ids"]
    prompt_mask = [0 if completion_only else 1] * len(prompt_ids)
    return {
        "input_ids": prompt_ids + completion_ids,
        "completion_mask": prompt_mask + [1] * len(completion_ids),
    }


def labels_from_mask(input_ids: list[int], completion_mask: list[int]) -> list[int]:
    """Labels as the loss sees them: -100 where a token carries no loss."""
    return [tok if keep else -100 for tok, keep in zip(input_ids, completion_mask)]


# --- what notebook 04 shows: both formats, the loss mask, the guide's end-token bug ---


def both_formats(tokenizer, example: dict, cfg: RunConfig) -> str:
    """One example rendered in the chat and the guide format, `|` marking where the loss part starts."""
    import dataclasses

    blocks = []
    for name in ("chat", "guide"):
        formatted = format_example(tokenizer, example, dataclasses.replace(cfg, format=name))
        blocks.append(f"=== {name} ===\n{formatted['prompt']}|{formatted['completion']}")
    return "\n\n".join(blocks)


def loss_table(tokenizer, tokenized: dict):
    """One row per token: position, id, token text, and whether it carries loss (a pandas DataFrame)."""
    import pandas as pd

    ids, mask = tokenized["input_ids"], tokenized["completion_mask"]
    return pd.DataFrame({
        "id": ids,
        "token": [tokenizer.decode([token]) for token in ids],
        "loss": [bool(keep) for keep in mask],
    })


def loss_text(tokenizer, tokenized: dict, mark: str = "░") -> str:
    """The labels decoded: tokens that carry loss as text, each masked (-100) token as `mark`."""
    labels = labels_from_mask(tokenized["input_ids"], tokenized["completion_mask"])
    pieces, run = [], []
    for label in labels + [-100]:  # a sentinel flushes the last run
        if label == -100:
            if run:
                pieces.append(tokenizer.decode(run))
                run = []
            pieces.append(mark)
        else:
            run.append(label)
    return "".join(pieces[:-1])


def guide_end_token_demo(tokenizer):
    """How the guide's `<|end_of_text|>` tokenizes here (several ordinary pieces) next to the real eos (one id)."""
    import pandas as pd

    rows = []
    for name, text in (("guide's end string", GUIDE_END_TOKEN), ("tokenizer.eos_token", tokenizer.eos_token)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append({
            "what": name,
            "text": text,
            "ids": ids,
            "pieces": [tokenizer.decode([i]) for i in ids],
            "n_tokens": len(ids),
            "is_eos": ids == [tokenizer.eos_token_id],
        })
    return pd.DataFrame(rows).set_index("what")
