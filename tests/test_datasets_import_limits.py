"""Imports that cannot sink the server: streamed line by line with limits, hostile nesting refused, large
files imported in the background with a progress bar, and still nothing written if any line is bad."""

import io
import json
from pathlib import Path

import pytest

from apps.datasets import importers, importing
from apps.datasets.models import Example, ImportBatch, ImportJob
from apps.datasets.tasks import import_file_task

FIXTURES = Path(__file__).parent / "fixtures" / "imports"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def tokenizer(settings, tiny_model_dir):
    settings.FTSTUDIO_TOKENIZER_DIR = str(tiny_model_dir)


def line(user: str, answer: str = "Hi Ana, it arrives Friday. Best, Support", **extra) -> str:
    return (
        json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra})
        + "\n"
    )


def nested(depth: int):
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


class ReadRecorder(io.BytesIO):
    """A stream that remembers the largest piece it was asked for (what the importer holds at once)."""

    largest = 0

    def readline(self, size=-1):
        data = super().readline(size)
        self.largest = max(self.largest, len(data))
        return data

    def read(self, size=-1):
        data = super().read(size)
        self.largest = max(self.largest, len(data))
        return data


def test_a_line_over_the_limit_is_a_numbered_error_found_without_reading_the_line_whole(team, settings):
    settings.FTSTUDIO_IMPORT_MAX_LINE_BYTES = 10_000
    long = line("Where is my parcel? " * 25_000)  # ~500 kB, 50 times the limit
    data = (line("first") + long + line("third") + '{"messages": 3}\n').encode()
    stream = ReadRecorder(data)
    report = importing.import_examples(project=team.project, path_or_file=stream)
    assert [(e.line, e.message.split(", ")[0]) for e in report.errors] == [
        (2, f"the line is {len(long.encode()):,} bytes"),
        (4, '"messages" must be a list'),
    ]
    assert "over the 10,000-byte limit for one line set by the administrator" in report.errors[0].message
    assert stream.largest <= 1024 * 1024, "the long line was read in bounded pieces"
    assert Example.objects.count() == 0 and ImportBatch.objects.count() == 0


def test_a_message_over_the_limit_is_a_numbered_error(team, settings):
    settings.FTSTUDIO_IMPORT_MAX_MESSAGE_CHARS = 1000
    data = (line("short") + line("x" * 1001) + line("fine", answer="y" * 1000)).encode()
    report = importing.import_examples(project=team.project, path_or_file=io.BytesIO(data))
    assert [str(e) for e in report.errors] == [
        "line 2: message 1 is 1,001 characters, over the 1,000-character limit for one message "
        "set by the administrator: shorten it or split the conversation"
    ]
    assert Example.objects.count() == 0


def test_a_csv_cell_over_the_message_limit_is_a_numbered_error(team, settings):
    settings.FTSTUDIO_IMPORT_MAX_MESSAGE_CHARS = 200_000
    data = f'input,output\nhello,"Hi, Best"\n"{"a" * 200_001}",ok\n'.encode()
    report = importing.import_examples(project=team.project, path_or_file=io.BytesIO(data), filename="x.csv")
    assert [e.line for e in report.errors] == [3] and "200,001 characters" in report.errors[0].message
    assert Example.objects.count() == 0


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_metadata_is_a_numbered_error_not_a_crash(team, depth):
    hostile = json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "metadata": nested(1)}
    )
    hostile = hostile.replace('{"k": "leaf"}', '{"k": ' * depth + '"leaf"' + "}" * depth)
    data = (line("first") + hostile + "\n").encode()
    report = importing.import_examples(project=team.project, path_or_file=io.BytesIO(data))
    assert [e.line for e in report.errors] == [2]
    assert "nested too deeply: values may nest at most 32 levels" in report.errors[0].message
    assert Example.objects.count() == 0


def test_deeply_nested_messages_on_the_upload_page_are_an_error_in_the_page(team):
    data = line("first") + '{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}\n"
    response = team.client("designer").post(
        "/p/support/data/import/", {"file": io.BytesIO(data.encode()), "file_format": "auto"}
    )
    page = response.content.decode()
    assert response.status_code == 200 and "Nothing was imported" in page
    assert "line 2: nested too deeply" in page


def test_nesting_within_the_limit_still_imports(team):
    data = line("first", metadata={"a": nested(20)}).encode()
    report = importing.import_examples(project=team.project, path_or_file=io.BytesIO(data))
    assert report.ok and Example.objects.get().metadata == {"a": nested(20)}


def test_the_stream_parser_matches_the_whole_text_parser():
    text = (FIXTURES / "valid_openai.jsonl").read_text()
    parsed = importers.Parsed("auto")
    rows = list(importers.parse_stream(io.BytesIO(text.encode()), parsed, filename="x.jsonl"))
    assert [r.messages for r in rows] == [r.messages for r in importers.parse(text).rows] and len(rows) == 3


def _named(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data)


def test_a_large_upload_imports_in_the_background_with_a_progress_bar(
    team, settings, eager, django_capture_on_commit_callbacks
):
    settings.FTSTUDIO_IMPORT_INLINE_BYTES = 100
    client = team.client("designer")
    data = (FIXTURES / "valid_openai.jsonl").read_bytes()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post("/p/support/data/import/", {"file": _named("big.jsonl", data), "file_format": "auto"})
    job = ImportJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/p/support/data/import/?job={job.pk}"
    assert Example.objects.count() == 0
    waiting = client.get(f"/p/support/data/import/?job={job.pk}&poll=1", HTTP_HX_REQUEST="true").content.decode()
    assert 'role="progressbar"' in waiting and 'hx-trigger="every 1s"' in waiting and "big.jsonl" in waiting
    for callback in callbacks:  # the worker picks the task up
        callback()
    job.refresh_from_db()
    assert job.status == "done" and job.progress == 100 and job.imported == 3
    assert Example.objects.filter(project=team.project, source=job.batch).count() == 3
    done = client.get(f"/p/support/data/import/?job={job.pk}&poll=1", HTTP_HX_REQUEST="true").content.decode()
    assert "Imported 3 examples" in done and "hx-trigger" not in done
    assert not (settings.MEDIA_ROOT / job.upload).exists(), "the stored upload is removed once imported"
    assert import_file_task(job.pk) == "already done" and Example.objects.count() == 3


def test_a_background_import_with_a_bad_line_imports_nothing_and_lists_the_lines(
    team, settings, eager, django_capture_on_commit_callbacks
):
    settings.FTSTUDIO_IMPORT_INLINE_BYTES = 100
    client = team.client("designer")
    data = (FIXTURES / "one_bad_line.jsonl").read_bytes()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/p/support/data/import/", {"file": _named("bad.jsonl", data), "file_format": "auto"})
    page = client.get(response["Location"]).content.decode()
    assert "Nothing was imported: 1 problem" in page and "line 2: no assistant message" in page
    assert Example.objects.count() == 0 and ImportBatch.objects.count() == 0


def test_a_second_delivery_of_an_import_job_never_imports_twice(team):
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = (FIXTURES / "valid_openai.jsonl").read_bytes()
    job = importing.start_import_job(
        project=team.project, upload=SimpleUploadedFile("a.jsonl", data), user=team.designer
    )
    stale = ImportJob.objects.get(pk=job.pk)
    ImportJob.objects.filter(pk=job.pk).update(status="done")  # another delivery committed while this one read
    importing.run_import_job(job=stale)
    assert Example.objects.count() == 0 and ImportBatch.objects.count() == 0
    assert ImportJob.objects.get(pk=job.pk).status == "done"


def test_another_project_cannot_read_an_import_job(team, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    job = importing.start_import_job(project=team.other_project, upload=SimpleUploadedFile("a.jsonl", b"{}\n"))
    assert team.client("designer").get(f"/p/support/data/import/?job={job.pk}").status_code == 404


@pytest.mark.parametrize("inline_bytes", [10**9, 100])
def test_uploads_spooled_to_disk_import_inline_and_in_the_background(
    team, settings, eager, inline_bytes, django_capture_on_commit_callbacks
):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 10  # Django writes the upload to a temporary file, as for large ones
    settings.FTSTUDIO_IMPORT_INLINE_BYTES = inline_bytes
    client = team.client("designer")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/p/support/data/import/",
            {"file": _named("a.jsonl", (FIXTURES / "valid_openai.jsonl").read_bytes()), "file_format": "auto"},
        )
    page = client.get(response["Location"]) if response.status_code == 302 else response
    assert "Imported 3 examples" in page.content.decode()
    assert Example.objects.filter(project=team.project).count() == 3


def test_an_import_job_whose_message_was_lost_is_sent_again_by_the_reaper(
    team, settings, eager, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.utils import timezone

    from apps.runs.recovery import reap

    data = (FIXTURES / "valid_openai.jsonl").read_bytes()
    lost = importing.start_import_job(
        project=team.project, upload=SimpleUploadedFile("a.jsonl", data), user=team.designer
    )
    recent = importing.start_import_job(project=team.project, upload=SimpleUploadedFile("b.jsonl", data))
    ImportJob.objects.filter(pk=lost.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.FTSTUDIO_REQUEUE_AFTER_SECONDS + 60)
    )
    with django_capture_on_commit_callbacks(execute=True):  # the reaper sends once its transaction commits
        resent = reap()
    assert resent["queued_imports"] == [lost.pk]
    assert ImportJob.objects.get(pk=lost.pk).status == "done" and Example.objects.count() > 0
    assert ImportJob.objects.get(pk=recent.pk).status == "queued"
