"""Graders (worker/graders.py): OpenAI's grader objects checked and run on hand-written outputs, with known values,
a fake model endpoint, and the refusals a person sees (which field, why)."""

import pytest

from worker import graders
from worker.graders import grade, grade_weighted, validate

OUT = "{{sample.output_text}}"
REF = "{{item.reference_answer}}"


def string_check(operation, reference=REF, **extra):
    return {"type": "string_check", "name": "s", "input": OUT, "reference": reference, "operation": operation, **extra}


def similarity(metric, **extra):
    return {
        "type": "text_similarity",
        "name": "t",
        "input": OUT,
        "reference": REF,
        "evaluation_metric": metric,
        **extra,
    }


def score_model(**extra):
    return {
        "type": "score_model",
        "name": "judge",
        "model": "judge-model",
        "input": [
            {"role": "system", "content": "Score the reply from 0 to 10."},
            {"role": "user", "content": "Reply: {{sample.output_text}}\nIdeal: {{item.reference_answer}}"},
        ],
        "range": [0, 10],
        **extra,
    }


def label_model(**extra):
    return {
        "type": "label_model",
        "name": "tone",
        "model": "judge-model",
        "input": [{"role": "user", "content": "Is this polite? {{sample.output_text}}"}],
        "labels": ["polite", "rude", "neutral"],
        "passing_labels": ["polite", "neutral"],
        **extra,
    }


def run(spec, output, item=None, **kw):
    assert validate(spec) == [], validate(spec)
    return grade(spec, {"output_text": output}, item or {}, **kw)


# --- string_check -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "operation, output, reference, expected",
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris.", "Paris", 0.0),
        ("ne", "Paris.", "Paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "The capital is paris.", "Paris", 0.0),
        ("ilike", "The capital is PARIS.", "paris", 1.0),
        ("ilike", "The capital is Rome.", "paris", 0.0),
    ],
)
def test_string_check_compares_the_filled_templates(operation, output, reference, expected):
    result = run(string_check(operation), output, {"reference_answer": reference})
    assert result.score == expected and result.error == ""


def test_a_template_reaches_nested_item_fields_and_the_outputs_json():
    spec = string_check("eq", reference="{{item.answer.city}}", input="{{sample.output_json.city}}")
    assert run(spec, '{"city": "Oslo"}', {"answer": {"city": "Oslo"}}).score == 1.0
    assert run(spec, '{"city": "Bergen"}', {"answer": {"city": "Oslo"}}).score == 0.0


def test_an_output_that_is_not_json_fails_a_json_grader_and_says_so():
    spec = string_check("eq", input="{{sample.output_json.city}}", reference="Oslo")
    result = run(spec, "Oslo", {})
    assert result.score == 0.0
    assert result.details["errors"] == {"sample_parse_error": True}
    assert "output_json" in result.error


def test_an_item_without_the_field_leaves_the_score_missing_not_zero():
    result = run(string_check("eq"), "Paris", {"answer": "Paris"})
    assert result.score is None
    assert "item.reference_answer" in result.error
    assert result.details["errors"] == {"invalid_variable_error": True}


# --- text_similarity ----------------------------------------------------------------------------------------------
ITEM = {"reference_answer": "the cat sat on the mat"}


def test_text_similarity_metrics_on_known_values():
    same = {m: run(similarity(m), "the cat sat on the mat", ITEM).score for m in graders.METRICS if m != "cosine"}
    # METEOR keeps its fragmentation penalty on an identical text: 0.5 * (1 chunk / 6 matches) ** 3
    assert same == pytest.approx({m: 1.0 - 0.5 / 6**3 if m == "meteor" else 1.0 for m in same})
    # "the cat is on the mat" against "the cat sat on the mat": 5 of 6 unigrams shared, in order
    output = "the cat is on the mat"
    assert run(similarity("rouge_1"), output, ITEM).score == pytest.approx(5 / 6)
    assert run(similarity("rouge_2"), output, ITEM).score == pytest.approx(3 / 5)  # the cat, on the, the mat
    assert run(similarity("rouge_l"), output, ITEM).score == pytest.approx(5 / 6)
    assert run(similarity("rouge_5"), output, ITEM).score == 0.0
    # Indel similarity: 1 - (insertions and deletions / both lengths); "is" -> "sat" keeps the "s": 1 + 2 edits
    assert run(similarity("fuzzy_match"), output, ITEM).score == pytest.approx(1 - 3 / 43)
    # GLEU: min(precision, recall) of 1-4-grams: 9 of 18 in the output's n-grams, 9 of 18 in the reference's
    assert run(similarity("gleu"), output, ITEM).score == pytest.approx(0.5)
    bleu = run(similarity("bleu"), output, ITEM).score
    assert 0.2 < bleu < 0.6  # smoothed: no 4-gram shared, still not 0
    assert run(similarity("bleu"), "dogs bark loudly", ITEM).score < 0.05
    meteor = run(similarity("meteor"), output, ITEM).score
    assert 0.5 < meteor < 1.0


def test_a_pass_threshold_says_whether_the_sample_passed():
    spec = similarity("rouge_1", pass_threshold=0.9)
    result = run(spec, "the cat is on the mat", ITEM)
    assert result.score == pytest.approx(5 / 6) and result.details["passed"] is False


def test_cosine_is_refused_without_an_embedding_model():
    errors = validate(similarity("cosine"))
    assert len(errors) == 1 and errors[0].startswith("evaluation_metric: cosine needs an embedding model")


# --- score_model and label_model through a fake endpoint ------------------------------------------------------------
class FakeModel:
    def __init__(self, reply=None, error=None):
        self.reply, self.error, self.calls = reply, error, []

    def __call__(self, model, messages, sampling):
        self.calls.append((model, messages, sampling))
        if self.error is not None:
            raise self.error
        return self.reply


def test_score_model_fills_the_templates_and_reads_the_score():
    endpoint = FakeModel('{"steps": ["close to the ideal"], "result": 7.5}')
    spec = score_model(sampling_params={"temperature": 0.2, "max_completions_tokens": 50})
    result = run(spec, "Paris it is", {"reference_answer": "Paris"}, call_model=endpoint)
    assert result.score == 7.5 and result.error == ""
    model, messages, sampling = endpoint.calls[0]
    assert model == "judge-model"
    assert messages[1]["content"] == "Reply: Paris it is\nIdeal: Paris"
    assert "from 0 to 10" in messages[-1]["content"]
    assert sampling == {"temperature": 0.2, "max_completion_tokens": 50}


@pytest.mark.parametrize("reply", ['{"result": 11}', "no idea", '{"result": "high"}'])
def test_a_score_outside_the_range_or_no_score_is_missing_with_a_parse_error(reply):
    result = run(score_model(), "x", {"reference_answer": "y"}, call_model=FakeModel(reply))
    assert result.score is None
    assert result.details["errors"] == {"model_grader_parse_error": True}


@pytest.mark.parametrize(
    "error, words", [(TimeoutError("60 s"), "timed out"), (graders.ModelCallError("HTTP 502"), "HTTP 502")]
)
def test_a_model_endpoint_that_times_out_or_fails_leaves_the_score_missing(error, words):
    result = run(score_model(), "x", {"reference_answer": "y"}, call_model=FakeModel(error=error))
    assert result.score is None  # missing, never 0
    assert words in result.error
    assert result.details["errors"] == {"model_grader_server_error": True}


def test_a_model_grader_without_an_endpoint_is_missing():
    assert run(score_model(), "x", {"reference_answer": "y"}).score is None


@pytest.mark.parametrize(
    "reply, expected", [('{"result": "polite"}', 1.0), ("neutral", 1.0), ('{"result": "rude"}', 0.0)]
)
def test_label_model_passes_on_a_passing_label(reply, expected):
    assert run(label_model(), "Thanks!", call_model=FakeModel(reply)).score == expected


def test_label_model_with_a_label_it_was_not_given_is_missing():
    result = run(label_model(), "Thanks!", call_model=FakeModel('{"result": "cheerful"}'))
    assert result.score is None and result.details["errors"] == {"model_grader_parse_error": True}


# --- multi -------------------------------------------------------------------------------------------------------
def multi(formula, **subs):
    return {"type": "multi", "name": "m", "graders": subs, "calculate_output": formula}


def test_multi_combines_named_scores_with_its_formula():
    spec = multi(
        "0.25 * exact + 0.75 * max(overlap, 0.5)",
        exact=string_check("eq"),
        overlap=similarity("rouge_1"),
    )
    result = run(spec, "the cat is on the mat", ITEM)
    assert result.score == pytest.approx(0.75 * 5 / 6)
    assert result.details["scores"] == {"exact": 0.0, "overlap": pytest.approx(5 / 6)}


def test_multi_is_missing_when_a_model_sub_grader_is_missing():
    spec = multi("a + b", a=string_check("eq"), b=score_model())
    result = run(spec, "x", {"reference_answer": "x"}, call_model=FakeModel(error=TimeoutError()))
    assert result.score is None
    assert result.details["scores"] == {"a": 1.0, "b": None}
    assert result.details["errors"]["model_grader_server_error"] is True


def test_a_division_by_zero_in_the_formula_is_a_formula_error():
    result = run(multi("1 / a", a=string_check("eq")), "x", {"reference_answer": "y"})
    assert result.score is None and result.details["errors"]["formula_parse_error"] is True


@pytest.mark.parametrize(
    "formula, words",
    [
        ("a + c", "'c' is not one of the graders"),
        ("__import__('os')", "the functions are"),
        ("a.real", "only numbers"),
        ("a +", "does not parse"),
    ],
)
def test_a_formula_that_is_not_arithmetic_over_the_graders_is_refused(formula, words):
    errors = validate(multi(formula, a=string_check("eq")), where="grader")
    assert len(errors) == 1 and errors[0].startswith("grader.calculate_output: ") and words in errors[0]


# --- rubric_check -----------------------------------------------------------------------------------------------
ANN = {
    "messages": [{"role": "user", "content": "Customer: Ann\nProblem: late parcel"}],
    "reference_answer": "Hi Ann, your parcel ships today. Best, the team",
}


def rubric(kind, text="", number=None):
    return {"type": "rubric_check", "name": f"check {kind}", "check": {"kind": kind, "text": text, "number": number}}


@pytest.mark.parametrize(
    "check, output, expected",
    [
        (rubric("starts_with", "Hi {customer},"), "Hi Ann, it ships today.", 1.0),
        (rubric("starts_with", "Hi {customer},"), "Hello Ann, it ships today.", 0.0),
        (rubric("not_contains", "sorry"), "Hi Ann, sorry!", 0.0),
        (rubric("regex", r"Best, the team$"), "Hi Ann. Best, the team", 1.0),
        (rubric("max_words", number=3), "one two three four", 0.0),
        (rubric("max_sentences", number=2), "One. Two.", 1.0),
        (rubric("valid_json"), '{"a": 1}', 1.0),
        (rubric("json_schema", '{"type": "object", "required": ["a"]}'), '{"b": 1}', 0.0),
        (rubric("similarity", number=0.9), "Hi Ann, your parcel ships today. Best, the team", 1.0),
        (rubric("similarity", number=0.9), "Hello.", 0.0),
    ],
)
def test_rubric_checks_grade_as_the_rubric_does(check, output, expected):
    result = run(check, output, ANN)
    assert result.score == expected, result.details


# --- validation -------------------------------------------------------------------------------------------------
def test_validation_names_each_field_of_a_list_of_graders():
    errors = validate(
        [
            string_check("contains"),
            rubric("regex", "(unclosed"),
            {"type": "python", "name": "p", "source": "def grade(sample, item): return 1"},
            {"type": "label_model", "name": "l", "model": "m", "input": [], "labels": ["a"], "passing_labels": []},
        ]
    )
    assert errors[0] == "graders[0].operation: must be one of eq, ne, like, ilike"
    assert errors[1].startswith("graders[1].check: the regular expression '(unclosed' does not compile")
    assert errors[2] == "graders[2].type: python graders are refused: the Studio runs no uploaded code"
    assert "graders[3].input: must be a non-empty list of messages" in errors[3]
    assert errors[4].startswith("graders[3].labels: must be a list of at least two")


def test_python_is_refused_also_inside_a_multi_grader():
    errors = validate(multi("p", p={"type": "python", "name": "p", "source": "x"}), where="grader")
    assert errors == ["grader.graders.p.type: python graders are refused: the Studio runs no uploaded code"]


def test_weights_that_add_up_to_zero_are_refused():
    assert validate([string_check("eq", weight=0), similarity("bleu", weight=0)]) == [
        "graders: the weights add up to 0; give at least one grader a weight above 0"
    ]
    assert validate([string_check("eq", weight=-1)]) == ["graders[0].weight: must be a number of at least 0; got -1"]
    zero = multi("a", a=string_check("eq", weight=0))
    assert validate(zero) == ["graders: the weights add up to 0; give at least one grader a weight above 0"]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"type": "string_check", "name": "s", "input": "{{output}}", "reference": "x", "operation": "eq"}, "input: "),
        (string_check("eq", reference="{{sample.text}}"), "reference: {{sample.text}}: the sample has output_text"),
        (score_model(range=[5, 1]), "range: must be two numbers"),
        (score_model(sampling_params={"logprobs": True}), "sampling_params.logprobs: not a sampling parameter"),
        (label_model(passing_labels=["great"]), "passing_labels: 'great' is not one of labels"),
        (string_check("eq", extra=1), "extra: not a field of a string_check grader"),
        ({"type": "grep", "name": "g"}, "type: must be one of string_check"),
        (
            score_model(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
            "input[0].content: a 'input_image' part",
        ),
    ],
)
def test_validation_says_which_field_is_wrong(spec, expected):
    errors = validate(spec)
    assert errors and errors[0].startswith(expected), errors


# --- a weighted list ---------------------------------------------------------------------------------------------
def test_a_weighted_list_is_the_weighted_mean_and_missing_when_a_part_is():
    parts = [string_check("eq", weight=3), {**similarity("rouge_1"), "weight": 1}]
    result = grade_weighted(parts, {"output_text": "the cat is on the mat"}, ITEM)
    assert result.score == pytest.approx((3 * 0 + 1 * 5 / 6) / 4)
    assert result.details["scores"] == {"s": 0.0, "t": pytest.approx(5 / 6)}
    with_model = [string_check("eq"), score_model()]
    missing = grade_weighted(
        with_model, {"output_text": "x"}, {"reference_answer": "x"}, call_model=FakeModel(error=TimeoutError())
    )
    assert missing.score is None and "judge: " in missing.error
