"""Graders in OpenAI's shapes: one score for one sampled reply. No Django here.

Minimal stand-in (``string_check`` only) with the interface the full module keeps: ``grade(spec, sample, item)``,
``sample = {"output_text": str}``, ``item = {"messages": [...], "reference_answer": str, ...}``. A score of None
means the grade is missing (an endpoint that did not answer), never a zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TEMPLATE = re.compile(r"\{\{\s*(sample|item)\.([A-Za-z0-9_]+)\s*\}\}")
STRING_OPERATIONS = ("eq", "ne", "like", "ilike")


@dataclass
class GradeResult:
    score: float | None  # None: missing (retry, or leave out), not 0
    error: str = ""


def render(template: str, sample: dict, item: dict) -> str:
    """``{{sample.output_text}}`` and ``{{item.<field>}}`` replaced by their values (unknown fields: empty)."""
    sources = {"sample": sample, "item": item}
    return TEMPLATE.sub(lambda m: str(sources[m.group(1)].get(m.group(2), "") or ""), template)


def string_check(spec: dict, sample: dict, item: dict) -> GradeResult:
    operation = spec.get("operation")
    if operation not in STRING_OPERATIONS:
        return GradeResult(None, f"unknown string_check operation {operation!r}")
    text, reference = render(spec.get("input", ""), sample, item), render(spec.get("reference", ""), sample, item)
    if operation == "eq":
        passed = text == reference
    elif operation == "ne":
        passed = text != reference
    elif operation == "like":
        passed = reference in text
    else:
        passed = reference.lower() in text.lower()
    return GradeResult(1.0 if passed else 0.0)


GRADERS = {"string_check": string_check}


def grade(spec: dict, sample: dict, item: dict) -> GradeResult:
    """One grader's score for one reply; an unknown type or a grader error is a missing score with the reason."""
    grader = GRADERS.get(spec.get("type", ""))
    if grader is None:
        return GradeResult(None, f"unknown grader type {spec.get('type')!r}")
    try:
        return grader(spec, sample, item)
    except Exception as exc:  # a grader's failure is this sample's missing score, with the reason
        return GradeResult(None, f"{type(exc).__name__}: {exc}")
