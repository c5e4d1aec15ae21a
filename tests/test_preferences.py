"""Preference pairs in the data stage: OpenAI's preference JSONL in and out, freezing numbered versions anchored to
an examples version (never with a pair on one of its test inputs), and the Preferences page's roles."""

from __future__ import annotations

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from apps.datasets import preferences
from apps.datasets.models import PreferenceOrigin, PreferencePair, PreferenceVersion
from apps.datasets.selectors import frozen_preference_versions
from apps.datasets.services import FreezeError
from tests.factories import conversation, make_dataset_version

pytestmark = pytest.mark.django_db


def line(user="Where is my parcel?", good="Hi Ann, it ships today.", bad="dunno", **extra) -> str:
    record = {
        "input": {"messages": [{"role": "user", "content": user}]},
        "preferred_output": [{"role": "assistant", "content": good}],
        "non_preferred_output": [{"role": "assistant", "content": bad}],
    }
    record.update(extra)
    return json.dumps(record)


def import_text(project, text: str, user=None):
    return preferences.import_preference_pairs(
        project=project, path_or_file=io.BytesIO(text.encode()), filename="pairs.jsonl", user=user
    )


def version_with_tests(project, tests=("Where is order #7?",)):
    return make_dataset_version(
        project,
        {
            "train": [conversation("How do I reset my password?", "Hi, use the link.")],
            "test": [conversation(q, "Hi, it ships today.") for q in tests],
        },
    )


# --- import -----------------------------------------------------------------------------------------
BAD_LINES = {
    "identical": (
        line(good="Same reply.", bad="  Same   reply. "),
        "the preferred and non-preferred outputs are the same reply",
    ),
    "missing output": (
        json.dumps({"input": {"messages": [{"role": "user", "content": "Hi"}]}, "preferred_output": []}),
        "missing non_preferred_output",
    ),
    "input not an object": (
        json.dumps(
            {
                "input": [{"role": "user", "content": "Hi"}],
                "preferred_output": [{"role": "assistant", "content": "a"}],
                "non_preferred_output": [{"role": "assistant", "content": "b"}],
            }
        ),
        '"input" must be an object holding the conversation\'s "messages", found a list',
    ),
    "input ends with the assistant": (
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
                "preferred_output": [{"role": "assistant", "content": "a"}],
                "non_preferred_output": [{"role": "assistant", "content": "b"}],
            }
        ),
        "the input ends with an assistant turn",
    ),
    "message without content": (
        json.dumps(
            {
                "input": {"messages": [{"role": "user"}]},
                "preferred_output": [{"role": "assistant", "content": "a"}],
                "non_preferred_output": [{"role": "assistant", "content": "b"}],
            }
        ),
        'message 1 (user) has no "content"',
    ),
    "non-assistant output": (
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": "Hi"}]},
                "preferred_output": [{"role": "user", "content": "a"}],
                "non_preferred_output": [{"role": "assistant", "content": "b"}],
            }
        ),
        "the preferred output is from 'user': it must be an assistant message",
    ),
    "two outputs on one side": (
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": "Hi"}]},
                "preferred_output": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "c"}],
                "non_preferred_output": [{"role": "assistant", "content": "b"}],
            }
        ),
        '"preferred_output" must be a list holding one assistant message, found a list of 2',
    ),
    "empty reply": (line(bad="   "), "the non-preferred output has empty content"),
    "not json": ("{not json", "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_line_is_reported_with_its_number_and_nothing_is_imported(team, case):
    bad, reason = BAD_LINES[case]
    text = "\n".join([line(user="First question"), line(user="Second question"), bad, line(user="Fourth")]) + "\n"
    report = import_text(team.project, text)
    assert not report.ok
    assert [e.line for e in report.errors] == [3], report.errors
    assert reason in str(report.errors[0]), str(report.errors[0])
    assert str(report.errors[0]).startswith("line 3: ")
    assert not PreferencePair.objects.filter(project=team.project).exists()


def test_a_line_over_the_byte_limit_is_refused_with_its_number(team, settings):
    settings.FTSTUDIO_IMPORT_MAX_LINE_BYTES = 400
    report = import_text(team.project, line() + "\n" + line(good="x" * 1000) + "\n")
    assert [e.line for e in report.errors] == [2]
    assert "over the 400-byte limit" in str(report.errors[0])
    assert not PreferencePair.objects.exists()


def test_a_file_over_the_upload_limit_is_refused(team, settings):
    settings.FTSTUDIO_MAX_UPLOAD_BYTES = 100
    report = import_text(team.project, line() + "\n" + line(user="Another") + "\n")
    assert not report.ok and "the limit is 100" in str(report.errors[0])
    assert not PreferencePair.objects.exists()


def test_import_keeps_tools_and_skips_pairs_already_in_the_pool(team):
    tools = [{"type": "function", "function": {"name": "track", "parameters": {"type": "object"}}}]
    with_tools = json.dumps(
        {
            "input": {
                "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                "tools": tools,
            },
            "preferred_output": [{"role": "assistant", "content": "Hello!"}],
            "non_preferred_output": [{"role": "assistant", "content": "What?"}],
        }
    )
    report = import_text(team.project, f"{line()}\n{with_tools}\n{line()}\n", user=team.designer)
    assert report.ok, report.errors
    assert (report.imported, report.skipped_duplicates) == (2, 1)
    again = import_text(team.project, f"{line()}\n")
    assert (again.imported, again.skipped_duplicates) == (0, 1)
    pair = PreferencePair.objects.get(project=team.project, tools=tools)
    assert pair.origin == PreferenceOrigin.IMPORT
    assert pair.origin_detail == {"file": "pairs.jsonl", "line": 2}
    assert pair.preferred == {"role": "assistant", "content": "Hello!"}
    assert pair.created_by == team.designer
    assert pair.messages[0] == {"role": "system", "content": "Be brief."}  # stored as the importer stores examples


def test_export_round_trips_the_pool_and_a_frozen_version(team):
    tools = [{"type": "function", "function": {"name": "track", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "track", "arguments": '{"id": 7}'}}
    lines = [line(user=f"Question {i}", good=f"Good answer {i}", bad=f"Bad answer {i}") for i in range(11)] + [
        json.dumps(
            {
                "input": {"messages": [{"role": "user", "content": "Where is #7?"}], "tools": tools},
                "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call]}],
                "non_preferred_output": [{"role": "assistant", "content": "I cannot look that up."}],
            }
        )
    ]
    assert import_text(team.project, "\n".join(lines)).imported == 12
    pool = "".join(preferences.preference_export_lines(project=team.project))
    version = preferences.freeze_preference_version(
        project=team.project, dataset_version=version_with_tests(team.project)
    )
    frozen = "".join(preferences.preference_export_lines(project=team.project, version=version.number))

    def pairs(text):
        return sorted(json.dumps(json.loads(x), sort_keys=True) for x in text.splitlines())

    assert pairs(frozen) == pairs(pool)
    assert json.loads(pool.splitlines()[-1])["preferred_output"][0]["tool_calls"] == [call]
    # what was exported imports again into another project unchanged
    other = import_text(team.other_project, pool)
    assert other.ok and other.imported == 12
    assert pairs("".join(preferences.preference_export_lines(project=team.other_project))) == pairs(pool)


# --- freezing -----------------------------------------------------------------------------------------
def test_freezing_is_deterministic_and_hashes_the_items(team):
    text = "\n".join(line(user=f"Question {i}", good=f"Good {i}", bad=f"Bad {i}") for i in range(40))
    import_text(team.project, text)
    anchor = version_with_tests(team.project)
    first = preferences.freeze_preference_version(project=team.project, dataset_version=anchor, note="first")
    assert first.number == 1 and first.dataset_version == anchor
    assert first.split_counts["train"] + first.split_counts["val"] == 40
    assert 1 <= first.split_counts["val"] <= 10  # about one in ten, chosen by each pair's hash
    with pytest.raises(FreezeError, match="Nothing changed since p1"):
        preferences.freeze_preference_version(project=team.project, dataset_version=anchor)

    # the same pool in another project freezes to the same splits, order and hash
    import_text(team.other_project, "\n".join(reversed(text.splitlines())))
    other = preferences.freeze_preference_version(
        project=team.other_project, dataset_version=version_with_tests(team.other_project)
    )
    assert other.content_hash == first.content_hash and other.split_counts == first.split_counts
    assert [(i.split, i.content_hash) for i in other.items.all()] == [
        (i.split, i.content_hash) for i in first.items.all()
    ]

    # a pair left out changes the hash; the frozen version keeps what it holds
    pair = PreferencePair.objects.filter(project=team.project).first()
    preferences.set_excluded(pair=pair, excluded=True)
    second = preferences.freeze_preference_version(project=team.project, dataset_version=anchor)
    assert second.number == 2 and second.content_hash != first.content_hash
    assert second.pair_count == 39 and first.items.count() == 40
    assert first.training_pairs("train")[0].keys() == {"messages", "tools", "preferred", "non_preferred"}
    assert list(frozen_preference_versions(team.project)) == [second, first]


def test_a_small_pool_trains_on_every_pair(team):
    import_text(team.project, "\n".join(line(user=f"Q {i}", good=f"G {i}") for i in range(4)))
    version = preferences.freeze_preference_version(
        project=team.project, dataset_version=version_with_tests(team.project)
    )
    assert version.split_counts == {"train": 4, "val": 0}


def test_freezing_refuses_pairs_on_the_anchors_test_inputs_and_names_them(team):
    anchor = version_with_tests(team.project, tests=("Where is order #7?", "Can I pay by card?"))
    # the same input, whatever its case and spacing, is one of the anchor's test examples
    import_text(
        team.project,
        "\n".join([line(user="How do I reset my password?"), line(user="  where is ORDER   #7? "), line(user="Hi")]),
    )
    leaking = PreferencePair.objects.get(project=team.project, messages__0__content="  where is ORDER   #7? ")
    with pytest.raises(FreezeError) as refused:
        preferences.freeze_preference_version(project=team.project, dataset_version=anchor)
    message = str(refused.value)
    assert f"pair #{leaking.pk}" in message and "test example 1" in message and "v1" in message
    assert "1 pair has the same input as a test example" in message
    assert not PreferenceVersion.objects.exists()
    # a training example's input is fine; once the leaking pair is left out the version freezes
    preferences.set_excluded(pair=leaking, excluded=True)
    version = preferences.freeze_preference_version(project=team.project, dataset_version=anchor)
    assert version.pair_count == 2


def test_freezing_refuses_an_empty_pool_and_another_projects_version(team):
    with pytest.raises(FreezeError, match="No preference pairs to freeze"):
        preferences.freeze_preference_version(project=team.project, dataset_version=version_with_tests(team.project))
    import_text(team.project, line())
    with pytest.raises(FreezeError, match="another project"):
        preferences.freeze_preference_version(
            project=team.project, dataset_version=version_with_tests(team.other_project)
        )


# --- the page ----------------------------------------------------------------------------------------
def _url(team, name, **kwargs):
    return reverse(name, kwargs={"slug": team.project.slug, **kwargs})


def test_designer_imports_freezes_and_downloads_on_the_preferences_page(team):
    client = team.client("designer")
    anchor = version_with_tests(team.project)
    page = client.get(_url(team, "preference_list")).content.decode()
    assert "Import pairs" in page and "Freeze a version" in page and "Preferences" in page
    upload = SimpleUploadedFile("pairs.jsonl", (line() + "\n" + line(user="Other", good="Fine.")).encode())
    response = client.post(_url(team, "preference_import"), {"file": upload}, follow=True)
    assert "Imported 2 pairs from pairs.jsonl" in response.content.decode()
    page = client.get(_url(team, "preference_list")).content.decode()
    assert "Hi Ann, it ships today." in page and "dunno" in page
    response = client.post(
        _url(team, "preference_freeze"), {"dataset_version": anchor.pk, "note": "first"}, follow=True
    )
    assert "Froze p1: 2 pairs" in response.content.decode()
    download = client.get(_url(team, "preference_export") + "?version=1")
    assert download["Content-Disposition"].endswith('-p1.jsonl"')
    assert len(b"".join(download).splitlines()) == 2
    assert client.get(_url(team, "preference_export") + "?version=9").status_code == 404


def test_import_errors_are_listed_with_line_numbers_on_the_page(team):
    upload = SimpleUploadedFile("pairs.jsonl", (line() + "\n" + line(good="same", bad="same")).encode())
    response = team.client("pm").post(_url(team, "preference_import"), {"file": upload})
    page = response.content.decode()
    assert response.status_code == 400
    assert "Nothing was imported: 1 problem" in page and "line 2: the preferred and non-preferred outputs" in page
    assert not PreferencePair.objects.exists()


def test_a_leak_is_shown_on_the_page_and_nothing_is_frozen(team):
    anchor = version_with_tests(team.project)
    import_text(team.project, line(user="Where is order #7?"))
    response = team.client("designer").post(_url(team, "preference_freeze"), {"dataset_version": anchor.pk})
    assert response.status_code == 400
    assert "the same input as a test example of v1" in response.content.decode()
    assert not PreferenceVersion.objects.exists()


def test_reviewer_reads_the_page_but_cannot_import_freeze_or_leave_pairs_out(team):
    anchor = version_with_tests(team.project)
    import_text(team.project, line())
    pair = PreferencePair.objects.get()
    client = team.client("reviewer")
    page = client.get(_url(team, "preference_list")).content.decode()
    assert "dunno" in page and "Import pairs" not in page and "Leave it out" not in page
    upload = SimpleUploadedFile("pairs.jsonl", line(user="Other").encode())
    assert client.post(_url(team, "preference_import"), {"file": upload}).status_code == 403
    assert client.post(_url(team, "preference_freeze"), {"dataset_version": anchor.pk}).status_code == 403
    assert client.post(_url(team, "preference_exclude", pk=pair.pk), {"excluded": "1"}).status_code == 403
    assert PreferencePair.objects.count() == 1 and not PreferencePair.objects.get().excluded
    assert not PreferenceVersion.objects.exists()


def test_leaving_a_pair_out_swaps_its_row_in_place(team):
    import_text(team.project, line())
    pair = PreferencePair.objects.get()
    response = team.client("designer").post(
        _url(team, "preference_exclude", pk=pair.pk), {"excluded": "1"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert f'id="pair-{pair.pk}"' in response.content.decode() and "Use it again" in response.content.decode()
    pair.refresh_from_db()
    assert pair.excluded
    page = team.client("designer").get(_url(team, "preference_list") + "?show=excluded").content.decode()
    assert f"Pair #{pair.pk}" in page


def test_the_preferences_tab_is_in_the_data_stage(team):
    page = team.client("reviewer").get(reverse("project_detail", args=[team.project.slug])).content.decode()
    assert _url(team, "preference_list") in page


def test_a_large_file_is_imported_by_the_background_job(team, settings, eager, django_capture_on_commit_callbacks):
    from apps.datasets.models import ImportJob

    settings.FTSTUDIO_IMPORT_INLINE_BYTES = 10
    client = team.client("designer")
    bad = SimpleUploadedFile("bad.jsonl", (line() + "\n" + line(good="same", bad="same")).encode())
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url(team, "preference_import"), {"file": bad})
    assert response.status_code == 302 and "?job=" in response["Location"]
    job = ImportJob.objects.get()
    assert job.status == "done" and job.error_count == 1 and job.errors[0].startswith("line 2: the preferred")
    assert not PreferencePair.objects.exists()
    page = client.get(response["Location"]).content.decode()
    assert "Nothing was imported: 1 problem" in page and "line 2: the preferred and non-preferred" in page

    good = SimpleUploadedFile("good.jsonl", (line() + "\n" + line(user="Other")).encode())
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url(team, "preference_import"), {"file": good})
    poll = client.get(response["Location"] + "&poll=1", HTTP_HX_REQUEST="true").content.decode()
    assert "Imported 2 pairs" in poll
    assert PreferencePair.objects.filter(project=team.project, origin=PreferenceOrigin.IMPORT).count() == 2
    assert ImportJob.objects.latest("id").file_format == "preference"
