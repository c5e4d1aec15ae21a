"""Splits (seeded, near-duplicates together) and frozen dataset versions."""

import io
import json

import pytest

from apps.datasets import importing, services, versions
from apps.datasets.models import DatasetVersion, Example
from tests.factories import conversation

PRODUCTS = ["kettle", "toaster", "lamp", "chair", "desk", "phone case", "backpack", "umbrella", "blender", "mirror"]
NAMES = ["Ana", "Sam", "Lee", "Kim", "Noor", "Raj", "Eva", "Tom", "Ola", "Max", "Ivy", "Ben"]


@pytest.fixture(autouse=True)
def tokenizer(settings, tiny_model_dir):
    settings.FTSTUDIO_TOKENIZER_DIR = str(tiny_model_dir)


def add(project, convs):
    data = "".join(json.dumps({"messages": c}) + "\n" for c in convs).encode()
    report = importing.import_examples(project=project, path_or_file=io.BytesIO(data))
    assert report.ok, report.errors


def varied(n, offset=0):
    return [
        conversation(
            f"My {PRODUCTS[i % 10]} number {i + offset} from order {1000 + i + offset} is broken, {NAMES[i % 12]} here "
            f"and I bought it in week {i % 52}",
            f"Hi {NAMES[i % 12]}, a new {PRODUCTS[i % 10]} ships today for order {1000 + i + offset}. Best, Support",
        )
        for i in range(n)
    ]


def splits(project):
    return dict(Example.objects.filter(project=project).values_list("content_hash", "split"))


def test_same_seed_gives_the_same_splits_and_ratios_are_respected(team):
    add(team.project, varied(200))
    counts = versions.assign_splits(project=team.project, seed=7)
    first = splits(team.project)
    assert counts == {"train": 160, "val": 20, "test": 20}
    versions.assign_splits(project=team.project, seed=7, reassign=True)
    assert splits(team.project) == first
    # the same examples imported in another order into another project split the same way
    add(team.other_project, list(reversed(varied(200))))
    versions.assign_splits(project=team.other_project, seed=7)
    assert splits(team.other_project) == first
    versions.assign_splits(project=team.project, seed=8, reassign=True)
    assert splits(team.project) != first


def test_near_duplicates_land_in_the_same_split(team):
    base = varied(60)
    twins = [conversation(c[0]["content"] + "!", c[1]["content"]) for c in base[:20]]
    add(team.project, base + twins)
    versions.assign_splits(project=team.project, seed=0)
    by_user = {e.messages[0]["content"].rstrip("!"): set() for e in Example.objects.all()}
    for e in Example.objects.all():
        by_user[e.messages[0]["content"].rstrip("!")].add(e.split)
    assert all(len(s) == 1 for s in by_user.values())
    assert services.run_quality_report(project=team.project).summary["leakage"] == 0


def test_existing_splits_are_kept_and_new_twins_join_them(team):
    add(team.project, varied(30))
    versions.assign_splits(project=team.project, seed=1)
    before = splits(team.project)
    test_example = Example.objects.filter(split="test").first()
    add(
        team.project,
        [conversation(test_example.messages[0]["content"] + " Please help.", test_example.ideal_output)]
        + varied(10, offset=500),
    )
    versions.assign_splits(project=team.project, seed=1)
    after = splits(team.project)
    assert all(after[h] == s for h, s in before.items())
    assert Example.objects.get(messages__0__content__endswith="Please help.").split == "test"
    assert "" not in after.values()


def test_bad_ratios_are_refused(team):
    with pytest.raises(services.CurationError, match="three non-negative numbers"):
        versions.assign_splits(project=team.project, ratios=(0.8, -0.1, 0.3))


def test_freezing_needs_approved_and_split_examples(team):
    add(team.project, varied(10))
    with pytest.raises(services.FreezeError, match="No approved examples"):
        versions.freeze_version(project=team.project)
    for e in Example.objects.all():
        services.set_status(example=e, status="approved", user=team.designer)
    with pytest.raises(services.FreezeError, match="10 approved examples have no split"):
        versions.freeze_version(project=team.project)


def test_a_frozen_version_never_changes_when_examples_are_edited(team):
    add(team.project, varied(40))
    versions.assign_splits(project=team.project, seed=3)
    examples = list(Example.objects.order_by("id"))
    for e in examples[:30]:
        services.set_status(example=e, status="approved", user=team.designer)
    v1 = versions.freeze_version(project=team.project, user=team.designer, note="first")
    assert v1.number == 1 and v1.example_count == 30
    assert sum(v1.split_counts.values()) == 30 and set(v1.split_counts) == {"train", "val", "test"}
    train = v1.conversations("train")
    assert len(train) == v1.split_counts["train"]
    stats = v1.token_stats["train"]
    assert stats["count"] == len(train) and stats["max"] >= stats["p95"] >= stats["p50"] > 0
    with pytest.raises(services.FreezeError, match="Nothing changed since v1"):
        versions.freeze_version(project=team.project)
    edited = Example.objects.get(pk=v1.items.get(position=0).example_id)
    services.save_ideal_output(
        example=edited, text="Changed after freezing", expected_revision=edited.revision, user=team.designer
    )
    v1.refresh_from_db()
    assert v1.conversations("train") == train and "Changed after freezing" not in json.dumps(train)
    services.set_status(example=examples[35], status="approved", user=team.designer)
    v2 = versions.freeze_version(project=team.project)
    assert v2.number == 2 and v2.content_hash != v1.content_hash and v2.example_count == 31
    assert "Changed after freezing" in json.dumps(v2.conversations(edited.split))


def test_freeze_page_reports_errors_and_lists_versions(team):
    client = team.client("designer")
    response = client.post("/p/support/data/versions/", {"note": "x"})
    assert "No approved examples to freeze" in response.content.decode()
    add(team.project, varied(10))
    versions.assign_splits(project=team.project)
    for e in Example.objects.all():
        services.set_status(example=e, status="approved", user=team.designer)
    response = client.post("/p/support/data/versions/", {"note": "ten"}, follow=True)
    assert "Froze v1: 10 approved examples" in response.content.decode()
    assert DatasetVersion.objects.get(project=team.project).note == "ten"
    assert team.client("reviewer").post("/p/support/data/versions/", {"note": "x"}).status_code == 403
    export = client.get("/p/support/data/export/?version=1&format=openai")
    assert len(export.content.decode().splitlines()) == 10


def test_an_experiment_s_subset_version_does_not_hide_that_nothing_changed_since_the_last_freeze(team):
    add(team.project, varied(40))
    versions.assign_splits(project=team.project, seed=3)
    for e in Example.objects.order_by("id")[:30]:
        services.set_status(example=e, status="approved", user=team.designer)
    v1 = versions.freeze_version(project=team.project, user=team.designer)
    positions = [i.position for i in v1.items.filter(split="train").order_by("position")[:5]]
    subset = versions.freeze_subset(source=v1, train_positions=positions)
    assert subset.number == 2 and subset.derived_from_id == v1.pk
    with pytest.raises(services.FreezeError, match="Nothing changed since v1"):
        versions.freeze_version(project=team.project)
