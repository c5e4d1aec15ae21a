"""Automatic checks against people: kappa and its item-bootstrap interval against a hand computation, the edge
cases, and `calibrate_judge` on an evaluation."""

import io
import re

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.evaluations import review, selectors
from apps.evaluations import statistics as st
from apps.evaluations.models import AutoCheck, Generation
from tests.eval_setup import add_reviewer, make_evaluation

# 14 pairs on 7 items (two pairs each); rows: people, columns: check, in the order first / tie / second
ROWS = [
    (1, "first", "first"),
    (1, "first", "first"),
    (2, "first", "first"),
    (2, "first", "first"),
    (3, "first", "tie"),
    (3, "tie", "first"),
    (4, "tie", "tie"),
    (4, "tie", "tie"),
    (5, "tie", "second"),
    (5, "second", "tie"),
    (6, "second", "second"),
    (6, "second", "second"),
    (7, "second", "second"),
    (7, "second", "second"),
]


def test_kappa_and_agreement_match_a_hand_computation():
    c = st.calibrate(ROWS, bootstrap=0)
    assert c.confusion == ((4, 1, 0), (1, 2, 1), (0, 1, 4))
    # observed 10/14; chance (5*5 + 4*4 + 5*5) / 14^2 = 66/196; kappa = (140 - 66) / (196 - 66) = 74/130
    assert c.kappa == pytest.approx(74 / 130) and c.agreement == pytest.approx(10 / 14)
    assert c.agreement_without_ties == 1.0 and c.decided_by_both == 8 and (c.pairs, c.items) == (14, 7)
    from sklearn.metrics import cohen_kappa_score

    assert c.kappa == pytest.approx(cohen_kappa_score([h for _, h, _ in ROWS], [g for _, _, g in ROWS]))


def test_the_kappa_interval_resamples_items_with_both_their_pairs():
    c = st.calibrate(ROWS, bootstrap=500, seed=7)
    # the same bootstrap written out by hand: draw 7 items with replacement, keep each item's two pairs together
    items = sorted({i for i, _, _ in ROWS})
    rng = np.random.default_rng(7)
    values = []
    for _ in range(500):
        picked = [items[j] for j in rng.integers(0, len(items), len(items))]
        pairs = [(h, g) for i in picked for (it, h, g) in ROWS if it == i]
        n = len(pairs)
        observed = sum(h == g for h, g in pairs) / n
        expected = (
            sum(sum(h == lab for h, _ in pairs) * sum(g == lab for _, g in pairs) for lab in st.PAIR_LABELS) / n / n
        )
        if expected < 1:
            values.append((observed - expected) / (1 - expected))
    assert (c.kappa_low, c.kappa_high) == pytest.approx((np.percentile(values, 2.5), np.percentile(values, 97.5)))
    assert c.kappa_low < c.kappa < c.kappa_high


def test_edge_cases_none_all_ties_and_one_item():
    empty = st.calibrate([])
    assert empty.pairs == 0 and empty.kappa is None and empty.agreement is None
    ties = st.calibrate([(1, "tie", "tie"), (2, "tie", "tie")])
    assert (
        ties.kappa is None and ties.agreement == 1.0 and ties.agreement_without_ties is None
    )  # not defined, not perfect
    one = st.calibrate([(1, "first", "first"), (1, "second", "second")])
    assert one.kappa == 1.0 and one.kappa_low is None  # one item: nothing to resample
    assert st.check_verdict(True, False) == "first" and st.check_verdict(False, True) == "second"
    assert st.check_verdict(True, True) == st.check_verdict(False, False) == "tie"


@pytest.mark.django_db
def test_calibrate_judge_prints_each_checks_table_and_kappa_last(team, settings, tiny_model_dir, tmp_path_factory):
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path_factory.mktemp("adapter"), fake=True)
    for item in selectors.eval_items(evaluation):
        item.messages = [{"role": "user", "content": "Customer: Cy\nMessage: where is my order?"}, *item.messages[-1:]]
        item.save()
    Generation.objects.filter(candidate__position=1).update(output="Hello there.")
    tone, correct = evaluation.rubric.criteria.all()
    AutoCheck.objects.create(criterion=tone, kind="starts_with", text="Hi {customer},")
    AutoCheck.objects.create(criterion=correct, kind="max_words", number=2)  # passes only "Hello there."
    # reviewers prefer the output that greets Cy by name, else call a tie (like the greeting check)
    for reviewer in (team.reviewer, add_reviewer(team, "second")):
        while (a := review.next_assignment(evaluation=evaluation, reviewer=reviewer)) is not None:
            greets = [s.letter for s in selectors.sides(a) if s.output.startswith("Hi Cy,")]
            review.submit_judgment(
                assignment=a, reviewer=reviewer, winner=greets[0] if len(greets) == 1 else "tie", scores={}
            )
    out = io.StringIO()
    call_command("calibrate_judge", "--evaluation", str(evaluation.pk), "--bootstrap", "200", stdout=out)
    text = out.getvalue()
    assert "Ran 18 automatic check results that were missing." in text
    greeting = text[text.index("== Tone: starts with") : text.index("== Correct")]
    # 9 pairs on 3 items: base beats the one that says Hello, base and run tie, the run beats it: all agree
    assert (
        "9 pairs on 3 items; agreement 100% with ties, 100% without ties (6 pairs where both picked a side); Cohen's "
        "kappa 1.00" in greeting
    )
    assert re.search(
        r"people \\ check\s+first\s+tie\s+second\n\s+first\s+3\s+0\s+0\n\s+tie\s+0\s+3\s+0\n\s+second\s+0\s+0\s+3",
        greeting,
    )
    words = text[text.index("== Correct: at most 2 words") : text.index("== All automatic checks")]
    assert "agreement 33% with ties, 0% without ties" in words  # it prefers exactly the output people rejected
    page = team.client("pm").get(f"/p/support/evals/{evaluation.pk}/results/").content.decode()
    assert (
        "Automatic checks against the reviewers" in page
        and "<td>9 (3)</td>" in page
        and "<td>3 0 0 / 0 3 0 / 0 0 3</td>" in page
    )
    together = re.search(r"== All automatic checks.*?Cohen's kappa (-?\d\.\d\d)", text, re.S)
    assert text.strip().splitlines()[-1] == f"kappa={together.group(1)}"  # the checks together, last


@pytest.mark.django_db
def test_calibrate_judge_says_when_the_rubric_has_no_checks(team, settings, tiny_model_dir, tmp_path_factory):
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path_factory.mktemp("adapter"), fake=True)
    with pytest.raises(CommandError, match="has no automatic checks"):
        call_command("calibrate_judge", "--evaluation", str(evaluation.pk))
