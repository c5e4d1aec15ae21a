"""The demo: generated house-style data, its deliberate flaws, and the idempotent seed command."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from apps.accounts.models import Membership, Project, Role
from apps.demo import generator, services
from apps.demo.generator import SIGN_OFF, check_reply, flawed_examples, generate_examples


# --- the generator ----------------------------------------------------------------------------------
def test_same_seed_gives_the_same_examples_and_another_seed_different_ones():
    first = [e.messages for e in generate_examples(50, seed=3)]
    assert first == [e.messages for e in generate_examples(50, seed=3)]
    assert first != [e.messages for e in generate_examples(50, seed=4)]


def test_every_clean_example_follows_the_house_style_for_its_own_customer():
    examples = generate_examples(300)
    assert len({e.messages[0]["content"] for e in examples}) == 300
    for example in examples:
        user, reply = example.messages[0]["content"], example.ideal_output
        fields = generator.parse_input(user)
        assert reply.startswith(f"Hi {fields['customer']},\n")
        assert reply.endswith("\n" + SIGN_OFF)
        assert check_reply(reply, user).all_pass, reply


def test_examples_vary_in_names_products_and_problems():
    examples = generate_examples(300)
    assert len({e.metadata["customer"] for e in examples}) >= 40
    assert len({e.metadata["product"] for e in examples}) == len(generator.PRODUCTS)
    assert len({e.metadata["problem"] for e in examples}) == len(generator.PROBLEMS)


def test_demo_examples_are_short_so_a_cpu_trains_on_them_quickly():
    examples = generate_examples(300)
    assert max(len(e.ideal_output) for e in examples) < 200
    assert max(len(e.messages[0]["content"]) for e in examples) < 350


def test_asking_for_more_examples_than_the_templates_can_make_is_refused():
    with pytest.raises(ValueError, match="at most"):
        generate_examples(10_000)


def test_style_check_fails_replies_a_base_model_typically_writes():
    example = generate_examples(1, seed=11)[0]
    user = example.messages[0]["content"]
    name = generator.parse_input(user)["customer"]
    answer = generator.base_answer(example)
    rambling = "I'm sorry for the inconvenience! As an AI assistant I cannot access orders."
    assert not check_reply(rambling, user).greets_by_name
    assert not check_reply(rambling, user).signs_off
    wrong_name = generator.format_reply(name="Somebody" if name != "Somebody" else "Else", answer=answer)
    assert not check_reply(wrong_name, user).greets_by_name
    assert check_reply(wrong_name, user).signs_off
    two_sentences = generator.format_reply(name=name, answer=answer + " Anything else?")
    assert not check_reply(two_sentences, user).one_sentence
    invented = generator.format_reply(name=name, answer="It will take 999 days.")
    assert not check_reply(invented, user).uses_facts


def test_flawed_examples_carry_each_kind_of_mistake_once():
    clean = generate_examples(60)
    flawed = flawed_examples(clean)
    assert sorted(f.flaw for f in flawed) == sorted(
        ["conflicting_answer", "near_duplicate", "too_short", "personal_data", "rambling", "off_style"]
    )
    by_flaw = {f.flaw: f for f in flawed}
    clean_inputs = {e.messages[0]["content"]: e.ideal_output for e in clean}
    conflicting = by_flaw["conflicting_answer"]
    assert clean_inputs[conflicting.messages[0]["content"]] != conflicting.ideal_output
    assert "@" in by_flaw["personal_data"].ideal_output
    assert not check_reply(by_flaw["off_style"].ideal_output, by_flaw["off_style"].messages[0]["content"]).all_pass
    # the four with inputs of their own become good examples once their reply is fixed
    for flaw in ("too_short", "personal_data", "rambling", "off_style"):
        assert by_flaw[flaw].messages[0]["content"] not in clean_inputs


# --- the seed ---------------------------------------------------------------------------------------
@pytest.fixture
def seeded(db):
    return services.seed_demo(size=40)


def test_seed_creates_the_project_with_one_member_per_role_whose_printed_logins_work(seeded):
    project = seeded.project
    roles = dict(Membership.objects.filter(project=project).values_list("user__username", "role"))
    assert roles == {"pat": Role.PM, "dana": Role.DESIGNER, "rui": Role.REVIEWER, "sam": Role.REVIEWER}
    assert set(seeded.logins) == set(roles)
    for username, password in seeded.logins.items():
        assert Client().login(username=username, password=password), username


def test_seed_freezes_raw_version_one_with_the_flawed_inbox_and_curated_version_two_without(seeded):
    from apps.datasets.models import Example, ExampleStatus

    raw, curated = seeded.project.dataset_versions.order_by("number")
    assert (raw.number, curated.number) == (1, 2)
    assert curated.example_count == 40 and raw.example_count == 46
    assert all(curated.split_counts[s] > 0 for s in ("train", "val", "test"))
    frozen = [m for split in ("train", "val", "test") for m in curated.conversations(split)]
    clean = {tuple((m["role"], m["content"]) for m in e.messages) for e in generate_examples(40)}
    assert {tuple((m["role"], m["content"]) for m in messages) for messages in frozen} == clean
    drafts = Example.objects.filter(project=seeded.project, status=ExampleStatus.DRAFT)
    assert drafts.count() == 6 and all(e.metadata.get("flaw") for e in drafts)  # still there for the designer to fix
    raw_examples = set(raw.items.values_list("example_id", flat=True))
    assert set(drafts.values_list("id", flat=True)) <= raw_examples  # raw = curated + the six flawed, as they came
    assert raw_examples - set(drafts.values_list("id", flat=True)) == set(
        curated.items.values_list("example_id", flat=True)
    )
    for item in raw.items.all():  # each in the split it has in the project (the curated version's split)
        assert item.split == item.example.split


def test_runs_on_the_raw_version_are_marked_not_evaluated_on_current_data(seeded, tmp_path):
    from apps.freshness.selectors import stale_runs
    from apps.runs.models import BaseModel
    from tests.eval_setup import make_run

    raw, curated = seeded.project.dataset_versions.order_by("number")
    base = BaseModel.objects.order_by("name").first()
    on_raw, on_curated = (make_run(seeded.project, v, base, tmp_path / f"a{v.number}") for v in (raw, curated))
    stale = stale_runs(seeded.project)
    assert stale == {on_raw.pk: "trained on v1; not evaluated on v2"}
    assert on_curated.pk not in stale


def test_the_quality_report_of_the_demo_flags_the_deliberate_flaws_and_nothing_else(seeded):
    from apps.datasets.selectors import latest_report

    report = latest_report(seeded.project)
    assert report is not None
    summary = {kind: n for kind, n in report.summary.items() if n}
    assert summary == {"conflict": 1, "near_duplicate": 2, "short_output": 1, "personal_data": 1}
    flagged = {e.metadata.get("flaw", "clean") for f in report.findings.all() for e in f.examples.all()}
    assert {"conflicting_answer", "near_duplicate", "too_short", "personal_data"} <= flagged


def test_seeding_twice_changes_nothing_and_prints_no_password_the_second_time(db, capsys):
    call_command("seed_demo", "--size", "30")
    first = capsys.readouterr().out
    counts = (Project.objects.count(), get_user_model().objects.count(), Project.objects.get().examples.count())
    call_command("seed_demo", "--size", "30")
    second = capsys.readouterr().out
    assert (Project.objects.count(), get_user_model().objects.count(), Project.objects.get().examples.count()) == counts
    passwords = services_passwords(first)
    assert len(passwords) == 4
    assert "nothing changed" in second
    assert not any(p in second for p in passwords)


def services_passwords(output: str) -> list[str]:
    return [line.split(" / ")[1].strip() for line in output.splitlines() if " / " in line]


def test_if_empty_leaves_a_database_that_already_has_projects_alone(team, capsys):
    call_command("seed_demo", "--if-empty")
    assert "not seeded" in capsys.readouterr().out
    assert not Project.objects.filter(slug=services.DEMO_SLUG).exists()


def test_too_small_a_demo_is_refused_with_the_reason(db):
    with pytest.raises(CommandError, match="too small"):
        call_command("seed_demo", "--size", "5")


def test_seed_writes_the_house_style_rubric_with_four_criteria(seeded):
    from apps.evaluations.models import Rubric

    rubric = Rubric.objects.get(project=seeded.project)
    criteria = list(rubric.criteria.order_by("position").values_list("name", "scale"))
    assert criteria == [
        ("Greets by name", "pass_fail"),
        ("House sign-off", "pass_fail"),
        ("Answers from the facts", "likert5"),
        ("One sentence, no padding", "likert5"),
    ]
    assert rubric.criteria.get(name="Answers from the facts").anchors["1"].startswith("Ignores the facts")


def test_the_demo_pms_next_step_panel_points_to_the_scaling_experiment_until_one_exists(db):
    from apps.demo.services import launch_demo_experiment

    project = services.seed_demo(size=80, quality_report=False).project  # 12.5 % of its 64 train examples: 8
    client = Client()
    client.force_login(get_user_model().objects.get(username="pat"))
    page = client.get(f"/p/{project.slug}/").content.decode()
    assert "Run the scaling experiment" in page and f'href="/p/{project.slug}/experiments/"' in page
    launch_demo_experiment(project=project)
    page = client.get(f"/p/{project.slug}/").content.decode()
    assert "Run the scaling experiment" not in page
    assert "v2 has no run yet" not in page and "not evaluated on current data (v2)" not in page
    assert "freeze a new version" not in page  # the experiment's subset versions are not the data to train on next
