"""The labelling view: autosave with optimistic locking, status, history, filters and permissions."""

import io
import json

import pytest

from apps.datasets import importing, services
from apps.datasets.models import Example, ExampleRevision
from tests.factories import conversation


@pytest.fixture(autouse=True)
def tokenizer(settings, tiny_model_dir):
    settings.FTSTUDIO_TOKENIZER_DIR = str(tiny_model_dir)


def add_examples(project, pairs, tags=None):
    lines = "".join(json.dumps({"messages": conversation(u, a), "tags": tags or []}) + "\n" for u, a in pairs)
    report = importing.import_examples(project=project, path_or_file=io.BytesIO(lines.encode()))
    assert report.ok, report.errors
    return list(Example.objects.filter(project=project).order_by("id"))


def save(client, example, text, revision, **extra):
    return client.post(
        f"/p/support/data/examples/{example.pk}/save/",
        {"text": text, "revision": revision, **extra},
        HTTP_HX_REQUEST="true",
    )


def test_second_designer_saving_a_stale_revision_is_refused_and_both_texts_are_kept(team):
    (example,) = add_examples(team.project, [("Where is my parcel?", "It ships Friday.")])
    first = save(team.client("designer"), example, "Hi Ana, it ships Friday. Best, Support", example.revision)
    assert first.status_code == 200 and "Saved · revision 2" in first.content.decode()

    second = save(team.client("pm"), example, "Hello Ana! Friday. Regards", example.revision)  # loaded revision 1
    page = second.content.decode()
    assert "designer saved this example while you were editing it" in page
    assert "Hello Ana! Friday. Regards" in page and "Hi Ana, it ships Friday. Best, Support" in page
    example.refresh_from_db()
    assert example.ideal_output == "Hi Ana, it ships Friday. Best, Support" and example.revision == 2
    assert 'id="revision"' not in page, "a refused save must not hand out the new revision silently"


def test_edit_conflict_from_the_service_carries_both_texts(team):
    (example,) = add_examples(team.project, [("Where is my parcel?", "It ships Friday.")])
    services.save_ideal_output(example=example, text="Theirs", expected_revision=1, user=team.designer)
    with pytest.raises(services.EditConflict) as conflict:
        services.save_ideal_output(example=example, text="Mine", expected_revision=1, user=team.pm)
    assert (conflict.value.yours, conflict.value.theirs, conflict.value.changed_by) == ("Mine", "Theirs", "designer")
    with pytest.raises(services.EditConflict):
        services.set_status(example=example, status="approved", user=team.pm, expected_revision=1)
    assert Example.objects.get().status == "draft"


def test_each_save_keeps_the_previous_text_in_the_history(team):
    (example,) = add_examples(team.project, [("Where is my parcel?", "It ships Friday.")])
    client = team.client("designer")
    save(client, example, "Version two", 1)
    save(client, example, "Version three", 2, status="approved")
    example.refresh_from_db()
    assert (example.ideal_output, example.status, example.revision) == ("Version three", "approved", 4)
    history = list(ExampleRevision.objects.filter(example=example).order_by("revision"))
    assert [(h.revision, h.messages[-1]["content"], h.status) for h in history] == [
        (1, "It ships Friday.", "draft"),
        (2, "Version two", "draft"),
        (3, "Version three", "draft"),
    ]
    assert [h.changed_by.username for h in history] == ["designer"] * 3
    page = client.get(f"/p/support/data/examples/{example.pk}/").content.decode()
    assert "History (3 changes)" in page and "It ships Friday." in page and "marked approved" in page


def test_approving_through_htmx_updates_the_badge_and_revision(team):
    (example,) = add_examples(team.project, [("Where is my parcel?", "It ships Friday.")])
    response = team.client("designer").post(
        f"/p/support/data/examples/{example.pk}/save/", {"revision": 1, "status": "approved"}, HTTP_HX_REQUEST="true"
    )
    page = response.content.decode()
    assert 'id="status-badge" class="badge ok" hx-swap-oob="true">Approved' in page
    assert 'id="revision" name="revision" value="2" hx-swap-oob="true"' in page


def test_an_empty_ideal_output_is_refused_with_a_message(team):
    (example,) = add_examples(team.project, [("Where is my parcel?", "It ships Friday.")])
    page = save(team.client("designer"), example, "   ", 1).content.decode()
    assert "The ideal output cannot be empty" in page
    assert Example.objects.get().ideal_output == "It ships Friday."


def test_reviewer_can_read_but_not_edit_examples(team):
    (example,) = add_examples(team.project, [("Where is my parcel?", "It ships Friday.")])
    reviewer = team.client("reviewer")
    page = reviewer.get(f"/p/support/data/examples/{example.pk}/").content.decode()
    assert "It ships Friday." in page and "<textarea" not in page and "can read examples but not edit" in page
    assert save(reviewer, example, "Hacked", 1).status_code == 403
    assert (
        reviewer.post(f"/p/support/data/examples/{example.pk}/save/", {"revision": 1, "status": "approved"}).status_code
        == 403
    )
    assert Example.objects.get().ideal_output == "It ships Friday." and Example.objects.get().status == "draft"


def test_examples_of_another_project_are_not_found(team):
    (other,) = add_examples(team.other_project, [("Hi", "Hello there")])
    assert team.client("designer").get(f"/p/support/data/examples/{other.pk}/").status_code == 404
    assert save(team.client("designer"), other, "x", 1).status_code == 404


def test_labelling_page_shows_shortcuts_and_walks_the_filtered_queue(team):
    examples = add_examples(team.project, [(f"Question {i}", f"Answer number {i}") for i in range(4)])
    services.set_status(example=examples[1], status="approved", user=team.designer)
    services.set_tags(example=examples[3], tags=["refunds"], user=team.designer)
    client = team.client("designer")
    page = client.get(f"/p/support/data/examples/{examples[0].pk}/?status=draft").content.decode()
    for shortcut in (
        "<kbd>a</kbd> approve",
        "<kbd>r</kbd> reject",
        "<kbd>j</kbd> next",
        "<kbd>k</kbd> previous",
        "<kbd>e</kbd> edit",
    ):
        assert shortcut in page
    assert f'href="/p/support/data/examples/{examples[2].pk}/?status=draft"' in page, "next skips the approved one"
    listing = client.get("/p/support/data/?tag=refunds").content.decode()
    assert "Answer number 3" in listing and "Answer number 0" not in listing
    assert "Answer number 1" not in client.get("/p/support/data/?status=draft").content.decode()


def test_example_list_queries_do_not_grow_with_the_page(team, django_assert_max_num_queries):
    add_examples(team.project, [(f"Question {i}", f"Answer number {i}") for i in range(60)])
    client = team.client("designer")
    with django_assert_max_num_queries(12):
        response = client.get("/p/support/data/?page=2")
    assert response.status_code == 200 and "Page 2 of 2" in response.content.decode()
