"""OpenAI's ``metadata`` rule, for every object that carries it (chat completions, fine-tuning jobs): up to 16
string pairs, keys up to 64 characters, values up to 512. Callers turn a problem into their own error."""

from __future__ import annotations

MAX_PAIRS, MAX_KEY, MAX_VALUE = 16, 64, 512


def problem(metadata, param: str = "metadata") -> tuple[str, str | None] | None:
    """(message, OpenAI error code) for metadata that breaks the rule, None for metadata that keeps it (or none)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return f"{param} must be an object of string keys and string values.", None
    if len(metadata) > MAX_PAIRS:
        return f"{param} has {len(metadata)} pairs; at most {MAX_PAIRS} are allowed.", "invalid_value"
    for key, value in metadata.items():
        if len(key) > MAX_KEY:
            return (
                f"{param} key {key[:20]!r}... is {len(key)} characters long; at most {MAX_KEY} are allowed.",
                "invalid_value",
            )
        if not isinstance(value, str):
            return f"{param}[{key}] must be a string; got {type(value).__name__}.", None
        if len(value) > MAX_VALUE:
            return f"{param}[{key}] is {len(value)} characters long; at most {MAX_VALUE} are allowed.", "invalid_value"
    return None
