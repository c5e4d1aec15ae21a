"""The quality report: each check finds its problem and stays quiet on clean data; dismissals stick."""

import io
import json
from pathlib import Path

import pytest

from apps.datasets import importing, services, versions
from apps.datasets.models import Example, QualityFinding, QualityReport
from apps.datasets.quality import personal_data
from tests.factories import conversation
from tests.test_datasets_versions import varied

FIXTURES = Path(__file__).parent / "fixtures" / "imports"


@pytest.fixture(autouse=True)
def tokenizer(settings, tiny_model_dir):
    settings.FTSTUDIO_TOKENIZER_DIR = str(tiny_model_dir)


def add(project, convs):
    data = "".join(json.dumps({"messages": c}) + "\n" for c in convs).encode()
    assert importing.import_examples(project=project, path_or_file=io.BytesIO(data)).ok


def flagged(report, kind):
    """The example ids of each open finding of a kind."""
    return [sorted(f.examples.values_list("id", flat=True)) for f in report.findings.filter(kind=kind, dismissed=False)]


def pk(user_text):
    return Example.objects.get(messages__0__content=user_text).pk


@pytest.fixture
def clean(team):
    add(team.project, varied(30))
    return team


def test_clean_examples_give_no_findings(clean):
    report = services.run_quality_report(project=clean.project)
    assert report.status == "done" and report.example_count == 30
    assert set(report.summary.values()) == {0} and report.findings.count() == 0


def test_exact_duplicates_made_by_editing_are_found(clean):
    a, b = Example.objects.order_by("id")[:2]
    b.refresh_from_db()
    services.save_ideal_output(example=b, text=a.ideal_output, expected_revision=b.revision, user=clean.designer)
    Example.objects.filter(pk=b.pk).update(messages=a.messages)
    report = services.run_quality_report(project=clean.project)
    assert flagged(report, "exact_duplicate") == [[a.pk, b.pk]]


def test_near_duplicates_are_found_and_distinct_examples_are_not(clean):
    original = Example.objects.order_by("id").first()
    twin_text = original.messages[0]["content"] + " Thanks!"
    add(clean.project, [conversation(twin_text, original.ideal_output)])
    report = services.run_quality_report(project=clean.project)
    assert flagged(report, "near_duplicate") == [[original.pk, pk(twin_text)]]
    assert flagged(report, "conflict") == [], "same answer to a near-same input is not a conflict"


def test_conflicting_outputs_for_the_same_or_near_same_input_are_found(clean):
    add(
        clean.project,
        [
            conversation("Where is my parcel?", "Hi, it arrives Friday. Best, Support"),
            conversation("where is my  parcel?", "Hi, it arrived yesterday already. Best, Support"),
            conversation(
                "My blue kettle from order 777 leaks water everywhere, what should I do now please",
                "Hi, return it. Best",
            ),
            conversation(
                "My blue kettle from order 777 leaks water everywhere, what should I do now please?!",
                "Hi, we refund you. Best",
            ),
        ],
    )
    report = services.run_quality_report(project=clean.project)
    conflicts = flagged(report, "conflict")
    assert sorted(conflicts) == sorted(
        [
            [pk("Where is my parcel?"), pk("where is my  parcel?")],
            sorted(
                [
                    pk("My blue kettle from order 777 leaks water everywhere, what should I do now please"),
                    pk("My blue kettle from order 777 leaks water everywhere, what should I do now please?!"),
                ]
            ),
        ]
    )


def test_empty_and_very_short_outputs_are_found(clean):
    project = clean.project
    Example.objects.create(project=project, messages=conversation("Blank?", ""), content_hash="x1")
    Example.objects.create(project=project, messages=conversation("Short?", "OK."), content_hash="x2")
    report = services.run_quality_report(project=project)
    assert flagged(report, "empty_output") == [[pk("Blank?")]]
    assert flagged(report, "short_output") == [[pk("Short?")]]


def test_outputs_over_the_models_context_are_found(clean):
    importing.import_examples(project=clean.project, path_or_file=FIXTURES / "warning_too_many_tokens.jsonl")
    report = services.run_quality_report(project=clean.project)
    long = Example.objects.get(messages__0__content__startswith="Summarise")
    assert flagged(report, "too_long") == [[long.pk]]
    assert "over the 512-token context" in report.findings.get(kind="too_long").detail


@pytest.mark.parametrize(
    "text,found",
    [
        ("Write to ana.silva@example.com for help", ["an email address"]),
        ("Call me on +44 20 7946 0958 tomorrow", ["a phone number"]),
        ("Call 555-123-4567", ["a phone number"]),
        ("My card is 4111 1111 1111 1111, charge it", ["a card number"]),
        ("Order 1000 arrived on 2024-05-01 and cost $12.50", []),
        ("The tracking code is AB123456789CD and the ticket #4532", []),
    ],
)
def test_personal_data_patterns(text, found):
    assert personal_data(text) == found


def test_personal_data_is_found_in_any_turn(clean):
    add(
        clean.project,
        [conversation("Hi it is ana.silva@example.com here, my order is late", "Hi Ana, it ships Friday. Best")],
    )
    report = services.run_quality_report(project=clean.project)
    assert flagged(report, "personal_data") == [[pk("Hi it is ana.silva@example.com here, my order is late")]]


def test_leakage_between_train_and_test_is_found(clean):
    versions.assign_splits(project=clean.project, seed=0)
    assert services.run_quality_report(project=clean.project).summary["leakage"] == 0
    train = Example.objects.filter(split="train").order_by("id").first()
    add(clean.project, [conversation(train.messages[0]["content"] + " Thanks!", train.ideal_output)])
    twin = Example.objects.order_by("-id").first()
    Example.objects.filter(pk=twin.pk).update(split="test")
    report = services.run_quality_report(project=clean.project)
    assert flagged(report, "leakage") == [[train.pk, twin.pk]]
    assert "train and in test" in report.findings.get(kind="leakage").detail


def test_a_dismissed_finding_stays_dismissed_until_its_examples_change(clean):
    add(
        clean.project,
        [
            conversation("Where is my parcel?", "Hi, it arrives Friday. Best, Support"),
            conversation("Where is my parcel", "Hi, it arrived yesterday. Best, Support"),
        ],
    )
    report = services.run_quality_report(project=clean.project)
    finding = report.findings.get(kind="conflict")
    response = clean.client("designer").post(
        f"/p/support/data/quality/findings/{finding.pk}/dismiss/", HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and "Dismissed" in response.content.decode()
    report.refresh_from_db()
    assert report.summary["conflict"] == 0
    again = services.run_quality_report(project=clean.project)
    assert again.summary["conflict"] == 0 and again.findings.get(kind="conflict").dismissed
    example = Example.objects.get(pk=pk("Where is my parcel"))
    services.save_ideal_output(
        example=example,
        text="Hi, it arrives Monday. Best, Support",
        expected_revision=example.revision,
        user=clean.designer,
    )
    assert services.run_quality_report(project=clean.project).summary["conflict"] == 1


def test_reviewer_cannot_dismiss_findings(clean):
    add(
        clean.project,
        [conversation("Where is my parcel?", "Friday, Best"), conversation("Where is my parcel", "Monday, Best")],
    )
    finding = services.run_quality_report(project=clean.project).findings.get(kind="conflict")
    assert clean.client("reviewer").post(f"/p/support/data/quality/findings/{finding.pk}/dismiss/").status_code == 403
    assert not QualityFinding.objects.get(pk=finding.pk).dismissed


def test_report_runs_as_a_task_from_the_page_and_flags_filter_the_queue(
    clean, eager, django_capture_on_commit_callbacks
):
    add(
        clean.project,
        [conversation("Where is my parcel?", "Friday, Best"), conversation("Where is my parcel", "Monday, Best")],
    )
    client = clean.client("designer")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/p/support/data/quality/")
    assert response.status_code == 302
    report = QualityReport.objects.get(project=clean.project)
    assert report.status == "done" and report.progress == 100 and report.summary["conflict"] == 1
    page = client.get("/p/support/data/quality/").content.decode()
    assert "Conflicting ideal outputs" in page and "Open these examples in the labelling queue" in page
    queue = client.get("/p/support/data/?flag=conflict").content.decode()
    assert "Friday, Best" in queue and "Monday, Best" in queue and "2 examples" in queue
    example_page = client.get(f"/p/support/data/examples/{pk('Where is my parcel?')}/?flag=conflict").content.decode()
    assert "Conflicting ideal outputs" in example_page and "Dismiss" in example_page


def test_the_task_is_idempotent(clean):
    from apps.datasets.tasks import quality_report_task

    report = QualityReport.objects.create(project=clean.project)
    assert quality_report_task(report.pk) == "done"
    assert quality_report_task(report.pk) == "already done"
    assert QualityReport.objects.filter(project=clean.project).count() == 1


def test_a_running_report_shows_its_progress_and_is_not_started_twice(clean):
    QualityReport.objects.create(
        project=clean.project, status="running", progress=40, stage="Near-duplicates (MinHash)"
    )
    client = clean.client("designer")
    fragment = client.get("/p/support/data/quality/?poll=1", HTTP_HX_REQUEST="true").content.decode()
    assert 'hx-trigger="every 1s"' in fragment and "Near-duplicates (MinHash) (40%)" in fragment
    assert 'aria-valuenow="40"' in fragment and "<html" not in fragment
    client.post("/p/support/data/quality/")
    assert QualityReport.objects.filter(project=clean.project).count() == 1


@pytest.mark.parametrize(
    "target,lands_on",
    [
        ("https://elsewhere.example/phish", "/p/support/data/quality/"),
        ("//elsewhere.example/phish", "/p/support/data/quality/"),
        ("/p/support/data/examples/1/?status=draft", "/p/support/data/examples/1/?status=draft"),
    ],
)
def test_dismissing_a_finding_only_returns_to_pages_of_this_site(clean, target, lands_on):
    add(
        clean.project,
        [conversation("Where is my parcel?", "Friday, Best"), conversation("Where is my parcel", "Monday, Best")],
    )
    finding = services.run_quality_report(project=clean.project).findings.get(kind="conflict")
    response = clean.client("designer").post(
        f"/p/support/data/quality/findings/{finding.pk}/dismiss/", {"next": target}
    )
    assert response.status_code == 302 and response["Location"] == lands_on
    assert QualityFinding.objects.get(pk=finding.pk).dismissed


@pytest.mark.django_db
def test_a_late_failure_does_not_overwrite_a_finished_report(clean):
    """A second delivery of the task that fails after another one finished leaves the report and its findings."""
    report = services.run_quality_report(project=clean.project)
    assert report.status == "done" and report.progress == 100
    assert report.mark_failed("RuntimeError: late") is False
    report.refresh_from_db()
    assert report.status == "done" and report.error == ""
    running = QualityReport.objects.create(project=clean.project)
    assert running.mark_running() and running.mark_failed("RuntimeError: boom")
    running.refresh_from_db()
    assert running.status == "failed" and running.error == "RuntimeError: boom" and running.finished_at
