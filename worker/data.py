"""Turn chat conversations into training features. No Django here.

* The model's own chat template renders each conversation; labels are -100 everywhere except on the
  assistant turns (their content and the end-of-turn token), so the loss is only on what the model
  should learn to write.
* Batches are padding-free: `DataCollatorWithFlattening` concatenates a batch's examples into one row
  with restarting ``position_ids``; transformers then masks attention block-diagonally, so no compute is
  spent on padding tokens. `padded_collator` is the plain alternative (pad to the longest in the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


class DataError(ValueError):
    """A conversation that cannot be trained on; the message says which one and why."""


@dataclass
class Feature:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans the model must learn (each assistant turn + its end)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(before) or not text.startswith(through):
            raise DataError("the chat template does not render conversations incrementally; cannot mask the prompt")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def encode_conversation(tokenizer, messages: list[dict], max_length: int) -> Feature:
    """Tokenize one conversation; labels only on the assistant turns; truncated to ``max_length`` tokens."""
    if not any(m.get("role") == "assistant" and (m.get("content") or "").strip() for m in messages):
        raise DataError("has no assistant turn to learn from")
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True,
                        max_length=max_length)
    labels = []
    for token_id, (start, _end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        inside = any(a <= start < b for a, b in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return Feature(input_ids=list(encoded["input_ids"]), labels=labels)


def encode_conversations(tokenizer, conversations: list[list[dict]], max_length: int) -> list[dict]:
    """Features for a split; conversations whose assistant turn is cut off entirely by truncation are dropped."""
    features = []
    for index, messages in enumerate(conversations):
        try:
            feature = encode_conversation(tokenizer, messages, max_length)
        except DataError as exc:
            raise DataError(f"conversation {index + 1}: {exc}") from exc
        if feature.trained_tokens:
            features.append({"input_ids": feature.input_ids, "labels": feature.labels})
    return features


def token_count(features: list[dict]) -> int:
    return sum(len(f["input_ids"]) for f in features)


def packed_collator():
    """Padding-free batches: one row per batch, position ids restart at each example (block-diagonal attention)."""
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)


def padded_collator(tokenizer):
    """Pad each batch to its longest example (the baseline the benchmark compares against)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)
