"""Import and export of examples: every validation error, atomicity, de-duplication, round trips."""

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from apps.datasets import importing
from apps.datasets.models import Example, ImportBatch
from apps.datasets.tokens import get_token_counter

FIXTURES = Path(__file__).parent / "fixtures" / "imports"


@pytest.fixture(autouse=True)
def tokenizer(settings, tiny_model_dir):
    settings.FTSTUDIO_TOKENIZER_DIR = str(tiny_model_dir)


def _import(team, name, **kwargs):
    return importing.import_examples(project=team.project, path_or_file=FIXTURES / name, user=team.designer, **kwargs)


@pytest.mark.parametrize(
    "name,line,reason",
    [
        ("error_invalid_json.jsonl", 2, "not valid JSON"),
        ("error_not_object.jsonl", 2, "not a JSON object"),
        ("error_missing_messages.jsonl", 2, 'missing the "messages" list'),
        ("error_empty_messages.jsonl", 2, '"messages" is empty'),
        ("error_message_missing_role.jsonl", 2, 'message 1 has no "role"'),
        ("error_message_missing_content.jsonl", 2, 'message 1 (user) has no "content"'),
        ("error_unknown_message_key.jsonl", 2, "message 1 (user) has unknown key 'mood'"),
        ("error_unknown_role.jsonl", 2, "message 1 has unknown role 'customer': use system, developer, user"),
        ("error_no_assistant.jsonl", 2, "no assistant message"),
        ("error_content_not_string.jsonl", 2, "message 1 (user): content must be a string, found a number"),
        ("error_empty_content.jsonl", 2, "message 2 (assistant) has empty content"),
        ("error_last_not_assistant.jsonl", 2, "the last message is from 'user'"),
        ("error_alpaca_missing_output.jsonl", 2, 'missing "output"'),
        ("error_csv_missing_column.csv", 1, "the header must name the columns input and output"),
        ("error_csv_empty_output.csv", 3, 'the "output" column is empty'),
    ],
)
def test_an_invalid_file_imports_nothing_and_names_the_line_and_the_reason(team, name, line, reason):
    report = _import(team, name)
    assert not report.ok and report.imported == 0
    assert [str(e) for e in report.errors if e.line == line and reason in e.message], [str(e) for e in report.errors]
    assert all(e.line == line for e in report.errors), "valid lines must not be reported"
    assert Example.objects.count() == 0 and ImportBatch.objects.count() == 0


def test_every_problem_of_a_file_is_reported_not_just_the_first(team, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text('{"messages": []}\n\n[1]\n{"messages": [{"role": "bot", "content": ""}]}\n')
    report = importing.import_examples(project=team.project, path_or_file=path)
    assert [(e.line, e.message.split(":")[0]) for e in report.errors] == [
        (1, '"messages" is empty'),
        (3, "not a JSON object"),
        (4, "message 1 has unknown role 'bot'"),
        (4, "message 1 has empty content"),
        (4, "no assistant message"),
    ]


def test_a_file_that_is_not_utf8_is_refused_with_the_line(team, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((FIXTURES / "valid_openai.jsonl").read_bytes() + '{"messages": "café"}\n'.encode("latin-1"))
    report = importing.import_examples(project=team.project, path_or_file=path)
    assert report.errors[0].line == 4 and "not UTF-8" in report.errors[0].message
    assert Example.objects.count() == 0


def test_valid_openai_file_imports_in_one_batch_with_token_counts(team, tiny_model_dir):
    report = _import(team, "valid_openai.jsonl")
    assert report.ok and report.imported == 3 and report.skipped_duplicates == 0
    examples = list(Example.objects.filter(project=team.project).order_by("id"))
    assert examples[0].messages[0] == {"role": "system", "content": "Reply in house style."}
    assert examples[1].ideal_output == "Hi Ana, your parcel arrives on Friday. Best, Support"
    assert {e.source_id for e in examples} == {report.batch.pk}
    assert all(e.status == "draft" and e.split == "" for e in examples)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    for example in examples:
        expected = len(hf.apply_chat_template(example.messages, tokenize=True))
        assert example.token_count == expected


def test_reimporting_the_same_file_creates_no_duplicates(team):
    assert _import(team, "valid_openai.jsonl").imported == 3
    again = _import(team, "valid_openai.jsonl")
    assert again.ok and again.imported == 0 and again.skipped_duplicates == 3
    assert Example.objects.filter(project=team.project).count() == 3


def test_the_same_file_can_be_imported_into_another_project(team):
    _import(team, "valid_openai.jsonl")
    report = importing.import_examples(project=team.other_project, path_or_file=FIXTURES / "valid_openai.jsonl")
    assert report.imported == 3


def test_alpaca_and_csv_become_conversations(team):
    alpaca = _import(team, "valid_alpaca.jsonl")
    assert alpaca.file_format == "alpaca" and alpaca.imported == 2
    answer = Example.objects.get(messages__1__content="Answer Ana.\n\nWhere is my parcel?")
    assert answer.messages[0] == {"role": "system", "content": "House style."}
    csv_report = importing.import_examples(project=team.other_project, path_or_file=FIXTURES / "valid.csv")
    assert csv_report.file_format == "csv" and csv_report.imported == 2, csv_report.errors
    multiline = Example.objects.get(project=team.other_project, metadata={})
    assert multiline.messages == [
        {"role": "user", "content": "Can I pay\nby card?"},
        {"role": "assistant", "content": "Hi Lee, yes, we take cards. Best, Support"},
    ]
    assert Example.objects.filter(metadata__product="parcel").count() == 1


def test_too_many_tokens_is_a_warning_with_counts_and_the_example_still_imports(team):
    report = _import(team, "warning_too_many_tokens.jsonl")
    assert report.ok and report.imported == 3
    counter = get_token_counter()
    assert counter.context_length == 512
    long = Example.objects.get(messages__0__content__startswith="Summarise")
    assert long.token_count > 512
    assert report.warnings[0].startswith("1 example over the 512-token context")
    assert f"line 2: {long.token_count:,} tokens" in report.warnings[0]
    assert not _import(team, "valid_openai.jsonl", max_tokens=10).warnings == []


def test_command_exits_non_zero_and_prints_every_error(team):
    err = io.StringIO()
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_examples", str(FIXTURES / "error_unknown_role.jsonl"), "--project", "support", stderr=err)
    assert "error: line 2: message 1 has unknown role 'customer'" in err.getvalue()
    assert Example.objects.count() == 0
    out = io.StringIO()
    call_command(
        "import_examples",
        str(FIXTURES / "valid_openai.jsonl"),
        "--project",
        "support",
        "--format",
        "openai",
        stdout=out,
    )
    assert "Imported 3 examples" in out.getvalue()


def test_exported_openai_jsonl_reimports_to_the_same_examples(team, tmp_path):
    _import(team, "valid_openai.jsonl")
    _import(team, "valid_alpaca.jsonl")
    out = io.StringIO()
    call_command("export_examples", "--project", "support", "--format", "openai", stdout=out)
    path = tmp_path / "export.jsonl"
    path.write_text(out.getvalue())
    report = importing.import_examples(project=team.other_project, path_or_file=path)
    assert report.imported == 5
    original = list(Example.objects.filter(project=team.project).order_by("id").values_list("messages", "content_hash"))
    copied = list(
        Example.objects.filter(project=team.other_project).order_by("id").values_list("messages", "content_hash")
    )
    assert original == copied


def test_alpaca_export_refuses_multi_turn_conversations_by_name(team, tmp_path):
    path = tmp_path / "multi.jsonl"
    path.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                    {"role": "assistant", "content": "d"},
                ]
            }
        )
        + "\n"
    )
    importing.import_examples(project=team.project, path_or_file=path)
    pk = Example.objects.get().pk
    with pytest.raises(CommandError, match=f"Example #{pk} has 2 user and 2 assistant turns"):
        call_command("export_examples", "--project", "support", "--format", "alpaca", stdout=io.StringIO())


def test_csv_export_round_trips_through_the_importer(team, tmp_path):
    _import(team, "valid.csv")
    response = team.client("designer").get("/p/support/data/export/?format=csv")
    assert response.status_code == 200 and response["Content-Disposition"].endswith('.csv"')
    path = tmp_path / "back.csv"
    path.write_bytes(response.content)
    report = importing.import_examples(project=team.other_project, path_or_file=path)
    assert report.imported == 2
    assert sorted(Example.objects.filter(project=team.other_project).values_list("content_hash", flat=True)) == sorted(
        Example.objects.filter(project=team.project).values_list("content_hash", flat=True)
    )


def test_upload_page_shows_line_errors_and_imports_nothing(team):
    client = team.client("designer")
    with open(FIXTURES / "one_bad_line.jsonl", "rb") as fh:
        response = client.post("/p/support/data/import/", {"file": fh, "file_format": "auto"})
    page = response.content.decode()
    assert response.status_code == 200 and "Nothing was imported" in page
    assert "line 2: no assistant message" in page
    assert Example.objects.count() == 0
    with open(FIXTURES / "one_bad_line_fixed.jsonl", "rb") as fh:
        response = client.post("/p/support/data/import/", {"file": fh, "file_format": "auto"})
    assert "Imported 3 examples" in response.content.decode()


def test_uploads_over_the_size_limit_are_refused(team, settings):
    settings.FTSTUDIO_MAX_UPLOAD_BYTES = 100
    with open(FIXTURES / "valid_openai.jsonl", "rb") as fh:
        response = team.client("designer").post("/p/support/data/import/", {"file": fh, "file_format": "auto"})
    assert "the limit is 100" in response.content.decode()
    assert Example.objects.count() == 0


def test_reviewer_cannot_import(team):
    with open(FIXTURES / "valid_openai.jsonl", "rb") as fh:
        response = team.client("reviewer").post("/p/support/data/import/", {"file": fh})
    assert response.status_code == 403 and Example.objects.count() == 0


def test_token_counts_match_the_full_tokenizer_on_awkward_text(tiny_model_dir):
    from tokenizers import Tokenizer

    texts = [
        "Hi  there,\n\n  it's   done!!",
        "Prix: 12,50 € — ça va? 🙂🙂",
        "literal <|im_end|> and <|im_start|>user",
        "don't won't I'll we've",
        "tabs\tand\r\nnewlines   ",
        "x" * 300,
        "日本語のテキスト 123456789",
        " ",
    ]
    reference = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    expected = [len(e) for e in reference.encode_batch(texts, add_special_tokens=False)]
    assert get_token_counter().count_texts(texts) == expected


def test_a_chat_template_cannot_run_code_when_tokens_are_counted(tiny_model_dir, tmp_path, caplog):
    """A model folder's chat template is untrusted: rendered sandboxed, as transformers does."""
    import shutil

    folder = tmp_path / "hostile-model"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "tokenizer.json", folder / "tokenizer.json")
    marker = tmp_path / "pwned"
    (folder / "chat_template.jinja").write_text(
        "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    )
    counter = get_token_counter(folder)
    assert not marker.exists()
    assert "Could not measure the chat template" in caplog.text
    assert counter.count_conversations([[{"role": "user", "content": "hello there"}]]) == [
        len(counter.tokenizer.encode("hello there", add_special_tokens=False).ids)
    ]


def test_a_harmless_template_still_measures_the_same_overheads_as_transformers(tiny_model_dir):
    from transformers import AutoTokenizer

    counter = get_token_counter(tiny_model_dir)
    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is my parcel?"},
        {"role": "assistant", "content": "Hi Ana, it arrives Friday."},
    ]
    assert counter.count_conversations([conversation]) == [len(hf.apply_chat_template(conversation, tokenize=True))]


def test_the_tokenizer_folder_comes_from_the_environment(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "from apps.datasets.tokens import get_token_counter as g; print(g().model_name)"
    env = {**os.environ, "DJANGO_DEBUG": "1", "FTSTUDIO_TOKENIZER_DIR": str(tiny_model_dir)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == tiny_model_dir.name
    env["FTSTUDIO_TOKENIZER_DIR"] = str(tmp_path)
    bad = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0 and "FTSTUDIO_TOKENIZER_DIR" in bad.stderr and "no tokenizer.json" in bad.stderr
