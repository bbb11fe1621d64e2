"""The row formats people bring, detected from the fields, each turned into the examples the project trains on.

An example is {"input": the question, "output": the answer} with, where the data has them, "reasoning" (the text of
R1's think block), "context" (the system message and earlier turns, as chat messages), "keywords" and "topic".

| format | fields | how |
|---|---|---|
| input-output | input, output | this project's own |
| messages | messages: [{role, content}] | TRL's conversational format; one example per assistant turn, the turns before
  it as context: each assistant turn is trained on once and nothing else carries loss, as TRL's assistant_only_loss |
| prompt-completion | prompt, completion | TRL's; strings, or message lists (the prompt's last message is the question) |
| alpaca | instruction, input, output | Alpaca; a non-empty input is context added below the instruction |
| sharegpt | conversations: [{from, value}] | ShareGPT; converted to messages by TRL's maybe_convert_to_chatml |
| columns | question/answer, prompt/response, ... | a table's columns by common names, or question_column/answer_column |

TRL's own detectors (`is_conversational`, `is_conversational_from_value`) tell its formats apart; the checks here
are the ones they lack: which field is missing or empty, which turn has the wrong role, each named by its location.
"""

from __future__ import annotations

import re

# Common column names for tables, first match wins: (question, answer).
COLUMN_PAIRS = (
    ("question", "answer"), ("prompt", "response"), ("instruction", "response"), ("query", "response"),
    ("question", "response"), ("prompt", "answer"), ("q", "a"), ("user", "assistant"),
)
REASONING_FIELDS = ("reasoning", "thinking", "reasoning_content")  # an optional think-block field, any format
FORMAT_FIELDS = {  # what each format reads; any other plain field (topic, source, id) is kept beside the example
    "input-output": {"input", "output"}, "alpaca": {"instruction", "input", "output"}, "prompt-completion": {"prompt", "completion"},
    "messages": {"messages"}, "sharegpt": {"conversations"}, "columns": set(),
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
THINK_BLOCK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)  # R1's own shape inside an assistant message

FORMAT_EXAMPLES = {
    "input-output": '{"input": "What is X?", "output": "X is ..."}',
    "messages": '{"messages": [{"role": "user", "content": "What is X?"}, {"role": "assistant", "content": "X is ..."}]}',
    "prompt-completion": '{"prompt": "What is X?", "completion": "X is ..."}',
    "alpaca": '{"instruction": "What is X?", "input": "", "output": "X is ..."}',
    "sharegpt": '{"conversations": [{"from": "human", "value": "What is X?"}, {"from": "gpt", "value": "X is ..."}]}',
    "columns": "a CSV/TSV/Parquet table with columns question,answer (or prompt,response, instruction,output, ...)",
}


def detect_format(row, columns: tuple[str, str] = ("", "")) -> str | None:
    """The format of one row from its fields; None when no format fits."""
    if not isinstance(row, dict):
        return None
    from trl.data_utils import is_conversational, is_conversational_from_value

    if columns[0] and columns[1]:
        return "columns"
    if "messages" in row and _non_empty_list(row["messages"]) and is_conversational({"messages": row["messages"]}):
        return "messages"
    if "conversations" in row and _non_empty_list(row["conversations"]) and is_conversational_from_value(row):
        return "sharegpt"
    if "prompt" in row and "completion" in row:
        return "prompt-completion"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "input" in row and "output" in row:
        return "input-output"
    if _column_pair(row):
        return "columns"
    # Half a format: the one it was meant to be, so that the problem names the missing field.
    for fields, fmt in (({"instruction"}, "alpaca"), ({"prompt", "completion"}, "prompt-completion"), ({"input", "output"}, "input-output")):
        if fields & set(row):
            return fmt
    return None


def unknown_format(row, where: str) -> str:
    """The problem line for a row whose fields fit no format."""
    fields = ", ".join(map(repr, row)) if isinstance(row, dict) else f"a JSON {type(row).__name__}"
    formats = "; ".join(f"{name}: {example}" for name, example in FORMAT_EXAMPLES.items())
    return (f"{where}: no known data format in its fields ({fields}). Use one of these - {formats}. Other column "
            "names: set question_column and answer_column (notebook 01's overrides, or --set).")


def to_examples(row, fmt: str, columns: tuple[str, str] = ("", "")) -> tuple[list[dict], list[str]]:
    """The examples in one row of format `fmt`, and its problems (without location: the caller adds it)."""
    if not isinstance(row, dict):
        return [], [f"expected a JSON object, got {type(row).__name__}"]
    convert = {
        "input-output": _input_output, "alpaca": _alpaca, "prompt-completion": _prompt_completion,
        "messages": lambda r: _messages(r.get("messages"), "messages"), "sharegpt": _sharegpt,
        "columns": lambda r: _columns(r, columns),
    }[fmt]
    examples, problems = convert(row)
    used = FORMAT_FIELDS[fmt] | set(columns if fmt == "columns" and all(columns) else _column_pair(row) or ()) | set(REASONING_FIELDS)
    extra = {key: value for key, value in row.items()
             if key not in used and (key == "keywords" or isinstance(value, (str, int, float, bool)))}
    reasoning = next((row[key] for key in REASONING_FIELDS if row.get(key)), None)
    for example in examples:
        for key, value in extra.items():
            example.setdefault(key, value)
        if reasoning is not None and fmt not in ("messages", "sharegpt"):
            example.setdefault("reasoning", reasoning)
    return examples, problems


# --- one function per format ---


def _text(row: dict, name: str, problems: list[str], required: bool = True) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, float) and value != value):  # JSON null; a table's empty cell (None, NaN)
        if required:
            problems.append(f"missing field {name!r}" if name not in row else f"field {name!r} is empty (null)")
        return ""
    if not isinstance(value, str):
        problems.append(f"field {name!r} must be a string, got {type(value).__name__}")
        return ""
    if required and not value.strip():
        problems.append(f"field {name!r} is empty")
    return value


def _input_output(row: dict):
    problems: list[str] = []
    question, answer = _text(row, "input", problems), _text(row, "output", problems)
    return ([{"input": question, "output": answer}] if not problems else []), problems


def _alpaca(row: dict):
    problems: list[str] = []
    instruction, answer = _text(row, "instruction", problems), _text(row, "output", problems)
    context = _text(row, "input", problems, required=False).strip()  # Alpaca's input is optional context
    question = f"{instruction}\n\n{context}" if context else instruction
    return ([{"input": question, "output": answer}] if not problems else []), problems


def _columns(row: dict, columns: tuple[str, str]):
    question_key, answer_key = columns if columns[0] and columns[1] else _column_pair(row) or ("question", "answer")
    problems: list[str] = []
    question, answer = _text(row, question_key, problems), _text(row, answer_key, problems)
    return ([{"input": question, "output": answer}] if not problems else []), problems


def _prompt_completion(row: dict):
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return _input_output({"input": prompt, "output": completion})
    if isinstance(prompt, list) and isinstance(completion, list):
        if len(completion) != 1:
            return [], [f"field 'completion' must hold one assistant message, got {len(completion)} messages"]
        return _messages(prompt + completion, "prompt + completion")
    return [], ["fields 'prompt' and 'completion' must both be strings, or both lists of {role, content} messages"]


def _sharegpt(row: dict):
    from trl.data_utils import maybe_convert_to_chatml

    converted = maybe_convert_to_chatml({"conversations": [dict(m) if isinstance(m, dict) else m for m in row["conversations"]]})
    messages = converted["messages"]
    for message in messages:
        if isinstance(message, dict) and message.get("role") in SHAREGPT_ROLES:
            message["role"] = SHAREGPT_ROLES[message["role"]]  # TRL renames the keys; ShareGPT's human/gpt stay
    return _messages(messages, "conversations")


def _messages(messages, field: str):
    """One example per assistant turn: the user turn before it is the question, everything earlier the context."""
    if not _non_empty_list(messages):
        return [], [f"field {field!r} must be a non-empty list of {{role, content}} messages"]
    problems, examples = [], []
    for n, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            problems.append(f"{field} message {n}: needs a 'role' and a string 'content'")
        elif message.get("role") not in ("system", "user", "assistant"):
            problems.append(f"{field} message {n}: role {message.get('role')!r} is not system, user or assistant")
        elif not message["content"].strip() and message["role"] != "system":
            problems.append(f"{field} message {n}: the {message['role']} message is empty")
    if problems:
        return [], problems
    for n, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = messages[n - 1] if n else None
        if not before or before["role"] != "user":
            problems.append(f"{field} message {n + 1}: an assistant turn must follow a user turn")
            continue
        answer, reasoning = _split_think(message)
        example = {"input": before["content"], "output": answer}
        if reasoning is not None:
            example["reasoning"] = reasoning
        context = [{"role": m["role"], "content": m["content"]} for m in messages[: n - 1]]
        if context:
            example["context"] = context
        if not answer.strip():
            problems.append(f"{field} message {n + 1}: the assistant's answer is empty after its think block")
        examples.append(example)
    if not examples and not problems:
        problems.append(f"field {field!r} has no assistant turn to learn from")
    return ([] if problems else examples), problems


def _split_think(message: dict) -> tuple[str, str | None]:
    """(answer, reasoning): R1's `<think>...</think>` at the start of the content, or a reasoning_content field."""
    content = message["content"]
    match = THINK_BLOCK.match(content)
    if match:
        return content[match.end():], match.group(1).strip()
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return content, reasoning if isinstance(reasoning, str) else None


def _column_pair(row: dict) -> tuple[str, str] | None:
    """The first common (question, answer) column pair the row has, matched without regard to case."""
    lowered = {str(key).lower(): key for key in row}
    for question, answer in COLUMN_PAIRS:
        if question in lowered and answer in lowered:
            return lowered[question], lowered[answer]
    return None


def _non_empty_list(value) -> bool:
    return isinstance(value, list) and bool(value)
