"""Turn chat conversations into training features. No Django here.

* The model's own chat template renders each conversation; labels are -100 everywhere except on the
  assistant turns (their content and the end-of-turn token), so the loss is only on what the model
  should learn to write. An assistant turn of ``weight`` 0 is context only (OpenAI's training format).
* A conversation may offer tools (OpenAI's function definitions; a conversation is then
  ``{"messages": [...], "tools": [...]}``) and hold assistant ``tool_calls`` and ``tool`` messages. A template
  that knows tools gets them through ``apply_chat_template(tools=...)``; for one that does not (SmolLM2's),
  `tool_messages` writes them in the Hermes style the Qwen templates use: the tools in ``<tools>`` in the system
  message, each call as ``<tool_call>{"name", "arguments"}</tool_call>`` in the assistant's text, each result as a
  user turn in ``<tool_response>``. The ``developer`` role is rendered as ``system``.
* Batches are (nearly) padding-free: `PackedRowsCollator` lays a batch's examples end to end in a few rows
  of about ``row_tokens`` (768) tokens, with ``position_ids`` restarting at each example; transformers then masks
  attention block-diagonally, so examples never see each other. Not one single row (as
  `DataCollatorWithFlattening` does) because the block-diagonal mask is computed densely on CPUs and
  without FlashAttention: a 1,300-token row spends a third of its forward pass on attention between
  different examples; rows of ~768 keep that small and leave only a few filler slots at the end of rows
  (measured on the shipped model, batch 8 of 75-238 tokens, forward + backward: one row 5.0 s, rows of
  512 5.1 s, rows of 768 4.2 s, padded to the longest 6.2 s).
  `padded_collator` is the plain alternative (pad to the longest in the batch).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

IGNORE_INDEX = -100
PACK_ROW_TOKENS = 768  # tokens per packed row; why 768: see the module docstring


class DataError(ValueError):
    """A conversation that cannot be trained on; the message says which one and why."""


@dataclass
class Feature:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def template_knows_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders tool calls itself (else `tool_messages` writes them)."""
    template = tokenizer.chat_template
    sources = template.values() if isinstance(template, dict) else [template or ""]
    return any("tool_calls" in source for source in sources)


def _arguments(text):
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


def tool_messages(messages: list[dict], tools: list[dict] | None, knows_tools: bool) -> list[dict]:
    """The messages as the chat template is given them: ``developer`` as ``system``, no ``weight``; tool calls
    with their arguments as objects (what templates expect) or, for a template without tool support, written out
    Hermes-style (see the module docstring)."""
    out = []
    for message in messages:
        m = {k: v for k, v in message.items() if k != "weight"}
        m["role"] = "system" if m.get("role") == "developer" else m.get("role")
        m["content"] = m.get("content") or ""
        calls = m.pop("tool_calls", None) or []
        if knows_tools:
            if calls:
                m["tool_calls"] = [
                    {**c, "function": {**c["function"], "arguments": _arguments(c["function"]["arguments"])}}
                    for c in calls
                ]
        elif calls:
            written = [
                "<tool_call>\n"
                + json.dumps({"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])})
                + "\n</tool_call>"
                for c in calls
            ]
            m["content"] = "\n".join(([m["content"]] if m["content"] else []) + written)
        elif m["role"] == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
        out.append(m)
    if tools and not knows_tools:
        listed = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{listed}"}
        else:
            out.insert(0, {"role": "system", "content": listed})
    return out


def assistant_spans(
    tokenizer, messages: list[dict], tools: list[dict] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans the model must learn (each assistant turn of weight other than 0
    + its end)."""
    knows_tools = template_knows_tools(tokenizer)
    shown = tool_messages(messages, tools, knows_tools)
    offset = len(shown) - len(messages)  # the system message written for tools, if any
    extra = {"tools": tools} if tools and knows_tools else {}
    text = tokenizer.apply_chat_template(shown, tokenize=False, **extra)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        j = i + offset
        before = (
            tokenizer.apply_chat_template(shown[:j], tokenize=False, add_generation_prompt=True, **extra) if j else ""
        )
        through = tokenizer.apply_chat_template(shown[: j + 1], tokenize=False, **extra)
        if not text.startswith(before) or not text.startswith(through):
            raise DataError("the chat template does not render conversations incrementally; cannot mask the prompt")
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def encode_conversation(tokenizer, messages: list[dict] | dict, max_length: int) -> Feature:
    """Tokenize one conversation (its messages, or ``{"messages", "tools"}``); labels only on the assistant turns
    of weight other than 0; truncated to ``max_length`` tokens."""
    tools = None
    if isinstance(messages, dict):
        messages, tools = messages["messages"], messages.get("tools") or None
    if not any(
        m.get("role") == "assistant"
        and m.get("weight", 1) != 0
        and ((m.get("content") or "").strip() or m.get("tool_calls"))
        for m in messages
    ):
        raise DataError("has no assistant turn to learn from")
    text, spans = assistant_spans(tokenizer, messages, tools)
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length
    )
    labels = []
    for token_id, (start, _end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        inside = any(a <= start < b for a, b in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return Feature(input_ids=list(encoded["input_ids"]), labels=labels)


def encode_conversations(tokenizer, conversations: list[list[dict] | dict], max_length: int) -> list[dict]:
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


@dataclass
class PackedRowsCollator:
    """A batch's examples packed into ``ceil(tokens / row_tokens)`` rows (longest first, each into the row with
    the fewest tokens so far), positions restarting per example. The first label of each example is ignored
    (the previous example's last token must not learn to predict it), so the loss is the padded batch's loss.
    The filler that evens out the rows is a sequence of its own with no loss. ``real_tokens`` in the batch
    counts the examples' tokens (what throughput is measured in); `PackedTrainer` takes it out before the model
    sees the batch."""

    row_tokens: int = PACK_ROW_TOKENS

    def __call__(self, features: list[dict]) -> dict:
        import torch

        lengths = [len(f["input_ids"]) for f in features]
        count = max(1, math.ceil(sum(lengths) / max(self.row_tokens, max(lengths))))
        rows: list[list[int]] = [[] for _ in range(count)]
        totals = [0] * count
        for i in sorted(range(len(features)), key=lambda i: -lengths[i]):
            r = totals.index(min(totals))
            rows[r].append(i)
            totals[r] += lengths[i]
        width = max(totals)
        input_ids = torch.zeros((count, width), dtype=torch.long)
        labels = torch.full((count, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((count, width), dtype=torch.long)
        for r, members in enumerate(rows):
            at = 0
            for i in sorted(members):
                n = lengths[i]
                input_ids[r, at : at + n] = torch.tensor(features[i]["input_ids"])
                labels[r, at + 1 : at + n] = torch.tensor(features[i]["labels"][1:])
                position_ids[r, at : at + n] = torch.arange(n)
                at += n
            position_ids[r, at:] = torch.arange(width - at)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "real_tokens": sum(lengths)}


def padded_collator(tokenizer):
    """Pad each batch to its longest example (the baseline the benchmark compares against)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)
