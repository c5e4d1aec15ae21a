"""Constrained decoding for one row of a batch, through llguidance (the library vLLM and SGLang use). No Django.

A grammar is llguidance's Lark text: ``response_format`` json_object / json_schema becomes ``%json {schema}``,
a forced tool call the grammar of its family's form (:mod:`worker.chat_format`). Each constrained row holds its
own matcher; at each step :func:`mask_rows` allows only the tokens its grammar accepts next in that row's
logits, so constrained and free rows share a batch.
"""

from __future__ import annotations

import json
from copy import copy

from worker.chat_format import STRICT_JSON


class GrammarError(ValueError):
    pass


def lark_for_response_format(response_format: dict) -> str | None:
    """None for ``text``; otherwise the Lark grammar of the JSON it asks for."""
    kind = response_format.get("type")
    if kind == "json_object":
        schema = {"type": "object"}
    elif kind == "json_schema":
        schema = dict(response_format["json_schema"].get("schema") or {"type": "object"})
    else:
        return None
    schema.setdefault("x-guidance", STRICT_JSON)
    return f"start: %json {json.dumps(schema)}"


def check(grammar: str) -> None:
    """Raise GrammarError (with llguidance's reason) when the grammar or schema cannot be used."""
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("lark", grammar))
    if error:
        raise GrammarError(error.split("\n")[0][:500])


def ll_tokenizer(tokenizer):
    """llguidance's view of a transformers tokenizer (built once per tokenizer: about a second)."""
    cached = getattr(tokenizer, "_ftstudio_ll_tokenizer", None)
    if cached is not None:
        return cached
    import llguidance

    backend = copy(tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    spec = json.loads(backend.to_str())
    decoder = spec.get("decoder") or {}
    # Tokenizers converted from GGUF chain ByteFallback/Replace in front of ByteLevel; their vocabulary is
    # byte-level, and llguidance reads tokens' bytes right only when the decoder says just that.
    if decoder.get("type") == "Sequence":
        byte_level = [d for d in decoder.get("decoders", []) if d.get("type") == "ByteLevel"]
        if byte_level:
            spec["decoder"] = byte_level[0]
    ll = llguidance.LLTokenizer(json.dumps(spec), eos_token=tokenizer.eos_token_id)
    tokenizer._ftstudio_ll_tokenizer = ll
    return ll


class RowGrammar:
    """One row's grammar state: which tokens may come next, and the tokens it took."""

    def __init__(self, tokenizer, grammar: str) -> None:
        import llguidance

        ll = ll_tokenizer(tokenizer)
        self.vocab = ll.vocab_size
        self.matcher = llguidance.LLMatcher(ll, llguidance.grammar_from("lark", grammar), log_level=0)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error()[:500])

    def take(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and allows nothing more (the row ends here)."""
        return self.matcher.is_stopped()


def mask_rows(logits, grammars: list[RowGrammar | None]) -> None:
    """Set to -inf, in place, each constrained row's logits of the tokens its grammar does not allow next
    (``grammars[j]`` is row j's, None for a free row). Free rows are not touched."""
    import llguidance.torch as llt
    import torch

    rows = [j for j, g in enumerate(grammars) if g is not None]
    if not rows:
        return
    vocab = grammars[rows[0]].vocab
    bitmask = llt.allocate_token_bitmask(len(grammars), vocab)
    for j in rows:
        llt.fill_next_token_bitmask(grammars[j].matcher, bitmask, j)
    width = min(logits.shape[-1], vocab)
    for j in rows:
        llt.apply_token_bitmask_inplace(logits[j : j + 1, :width], bitmask[j : j + 1])
        if logits.shape[-1] > vocab:
            logits[j, vocab:] = -torch.inf
