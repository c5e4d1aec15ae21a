"""worker/checks.py on hand-written outputs: every kind passes and fails where a person would say so, and a
check that could never run is refused with the reason."""

import time

import pytest

from worker.checks import CheckError, CheckSpec, describe, input_fields, run_check, validate

DEMO_INPUT = [
    {"role": "user", "content": "Customer: Ann\nProduct: Lumo kettle\nMessage: It leaks.\nFacts: 2-year warranty"}
]
REPLY = "Hi Ann,\nYour kettle is covered by the 2-year warranty.\nWarm regards, Lumo Care Team"


def passes(spec: CheckSpec, output: str, **kwargs) -> bool:
    validate(spec)
    return run_check(spec, output, fields=input_fields(DEMO_INPUT, {"customer": "Ann", "demo": True}), **kwargs).passed


def test_fields_come_from_the_input_lines_and_the_metadata():
    fields = input_fields(DEMO_INPUT, {"customer": "Bo", "variant": 3, "flags": ["x"]})
    assert fields["customer"] == "Ann"  # the input wins over metadata
    assert fields["product"] == "Lumo kettle" and fields["variant"] == "3" and "flags" not in fields


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        (CheckSpec("starts_with", "Hi {customer},"), REPLY, "Hi Bo,\nYour kettle is covered."),
        (CheckSpec("ends_with", "Warm regards, Lumo Care Team"), REPLY + "\n\n", REPLY + "\nPS: call us"),
        (CheckSpec("contains", "{product}"), "The Lumo kettle is covered.", "Your kettle is covered."),
        (CheckSpec("not_contains", "sorry"), REPLY, "Hi Ann, so sorry about that."),
        (CheckSpec("regex", r"\b\d+-year warranty\b"), REPLY, "Hi Ann, it has a warranty."),
        (CheckSpec("max_sentences", number=2), "One. Two!", "One. Two? Three"),
        (CheckSpec("max_words", number=5), "one two three four five", "one two three four five six"),
        (CheckSpec("valid_json"), '{"answer": "yes"}', "{'answer': 'yes'}"),
        (
            CheckSpec(
                "json_schema",
                '{"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}',
            ),
            '{"answer": "yes"}',
            '{"answer": 3}',
        ),
    ],
)
def test_each_check_passes_the_good_output_and_fails_the_bad_one(spec, good, bad):
    assert passes(spec, good), describe(spec)
    assert not passes(spec, bad), describe(spec)


def test_similarity_uses_the_stored_token_f1_against_the_threshold():
    spec = CheckSpec("similarity", number=0.6)
    assert passes(spec, "x", similarity=0.6) and not passes(spec, "x", similarity=0.59)
    assert run_check(spec, "x", similarity=0.25).detail == "token F1 0.25 (< 0.6)"


def test_a_sentence_count_counts_a_trailing_fragment_and_ignores_decimals():
    spec = CheckSpec("max_sentences", number=1)
    assert passes(spec, "It costs 2.50 euros.") and not passes(spec, "It costs 2.50 euros. Thanks")


def test_the_reasons_say_what_was_found():
    fields = input_fields(DEMO_INPUT)
    assert (
        run_check(CheckSpec("starts_with", "Hi {customer},"), "Hello Ann", fields=fields).detail
        == "starts with 'Hi Ann,': no"
    )
    assert (
        run_check(CheckSpec("json_schema", '{"properties": {"n": {"type": "integer"}}}'), '{"n": "x"}').detail
        == "at n: 'x' is not of type 'integer'"
    )
    missing = run_check(CheckSpec("contains", "{order_id}"), REPLY, fields=fields)
    assert not missing.passed and "the input has no field 'order_id'" in missing.detail


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (CheckSpec("regex", "(unclosed"), "does not compile: missing ) at position 9"),
        (CheckSpec("json_schema", '{"type": "banana"}'), "not a valid JSON Schema"),
        (CheckSpec("json_schema", "{type: object}"), "the schema is not JSON"),
        (CheckSpec("max_words"), "needs a number"),
        (CheckSpec("max_words", number=2.5), "whole number"),
        (CheckSpec("similarity", number=1.5), "between 0 and 1"),
        (CheckSpec("contains", ""), "needs a text"),
        (CheckSpec("contains", "Hi {customer"), "do not parse"),
        (CheckSpec("contains", "Hi {0}"), "not a field name"),
        (CheckSpec("shouts"), "unknown check"),
    ],
)
def test_a_check_that_could_never_run_is_refused_with_the_reason(spec, reason):
    with pytest.raises(CheckError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        validate(spec)


def test_a_catastrophically_backtracking_regex_fails_the_output_instead_of_hanging():
    spec = CheckSpec("regex", r"^(a|aa)+$")  # exponential on a near miss, even for the regex package's optimiser
    validate(spec)
    start = time.monotonic()
    result = run_check(spec, "a" * 60 + "b")
    assert time.monotonic() - start < 5 and not result.passed and "took over" in result.detail
