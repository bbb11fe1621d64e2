"""An answer shown while it is generated: transformers' TextStreamer, each finished piece of text handed to a callback.

Why TextStreamer with a callback rather than TextIteratorStreamer: the iterator needs generation in a second thread
while the caller reads its queue. The playground's click handler can show each piece itself, in the thread that
generates, so an error in generation (out of memory) is raised in the click that caused it and nothing outlives it.
TextStreamer keeps its own incremental decoding: it re-decodes the tokens since the last newline and releases text
up to the last space, so a piece never ends inside a word or a multi-byte character.

The pieces joined are `Generation.text`: decoded with the special tokens kept (R1's `</think>` is one in some
tokenizers), and without the end-of-sequence token, which ends the answer but is not part of it.
"""

from __future__ import annotations

from collections.abc import Callable


def answer_streamer(tokenizer, on_text: Callable[[str], None], stop_ids: set[int]):
    """A streamer for `generate(..., streamer=)` calling `on_text(piece)` as text is ready; `stop_ids` not shown."""
    import torch
    from transformers import TextStreamer

    class AnswerStreamer(TextStreamer):
        def put(self, value):
            if self.next_tokens_are_prompt:  # the prompt comes first, whole; skip_prompt drops it
                return super().put(value)
            kept = [token for token in value.reshape(-1).tolist() if token not in stop_ids]
            if kept:
                super().put(torch.tensor(kept))

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                on_text(text)

    return AnswerStreamer(tokenizer, skip_prompt=True, skip_special_tokens=False)
