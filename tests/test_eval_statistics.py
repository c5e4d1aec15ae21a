"""The results page's statistics against hand-computed values and the reference libraries, on fixed data."""

import math

import krippendorff
import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.metrics import cohen_kappa_score

from apps.evaluations import statistics as st


def test_win_rate_counts_ties_in_the_denominator_with_a_wilson_interval():
    # 7 wins, 2 losses, 1 tie: 7/10; Wilson by hand: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    r = st.win_rate(7, 2, 1)
    assert r.rate == 0.7 and r.n == 10 and r.tie_rate == 0.1
    assert r.low == pytest.approx(0.39678, abs=1e-5)
    assert r.high == pytest.approx(0.89221, abs=1e-5)
    # sign test on the 9 decisive judgments: 2 · P(X >= 7 | 9, 1/2) = 2 · (36 + 9 + 1) / 512
    assert r.p_value == pytest.approx(92 / 512)
    assert not r.significant


def test_a_clear_preference_is_significant_and_needs_no_more_judgments():
    r = st.win_rate(18, 2, 0)
    assert r.significant
    assert st.judgments_needed(18, 2, 0) == 0


def test_judgments_needed_for_a_60_40_split():
    # p = 0.6: n_decisive = 1.96² · 0.6 · 0.4 / 0.1² = 92.2 -> 93 judgments, 10 already made
    assert st.judgments_needed(6, 4, 0) == 83
    # with a 50% tie rate twice as many judgments are needed: ceil(92.2 / 0.5) = 185, 20 already made
    assert st.judgments_needed(6, 4, 10) == 165
    assert st.judgments_needed(5, 5, 2) is None
    assert st.judgments_needed(0, 0, 3) is None


def test_bradley_terry_two_candidates_matches_the_odds():
    # 3 wins to 1: p0 / p1 = 3, geometric mean 1 -> sqrt(3), 1/sqrt(3)
    p = st.bradley_terry(np.array([[0, 3], [1, 0]]))
    assert p[0] == pytest.approx(math.sqrt(3), rel=1e-6)
    assert p[1] == pytest.approx(1 / math.sqrt(3), rel=1e-6)


def test_bradley_terry_recovers_strengths_from_a_consistent_table():
    # strengths 4 : 2 : 1 -> P(0>1) = 2/3, P(1>2) = 2/3, P(0>2) = 4/5; counts exactly proportional
    wins = np.array([[0, 20, 40], [10, 0, 20], [10, 10, 0]])
    p = st.bradley_terry(wins)
    assert p == pytest.approx([2.0, 1.0, 0.5], rel=1e-6)


def test_bradley_terry_matches_a_direct_likelihood_maximisation():
    wins = np.array([[0, 7, 3, 5], [4, 0, 6, 2], [6, 3, 0, 4], [1, 5, 2, 0]], dtype=float)

    def nll(theta):
        theta = np.append(theta, -theta.sum())  # log-strengths summing to zero
        diff = theta[:, None] - theta[None, :]
        return -(wins * (diff - np.logaddexp(0, diff))).sum()

    expected = np.exp(np.append(res := minimize(nll, np.zeros(3), method="BFGS").x, -res.sum()))
    assert st.bradley_terry(wins) == pytest.approx(expected, rel=1e-4)


def test_ranking_orders_candidates_with_bootstrap_intervals_around_the_fit():
    outcomes = [(0, 1, 1.0)] * 8 + [(0, 1, 0.0)] * 2 + [(1, 2, 1.0)] * 7 + [(1, 2, 0.5)] * 3 + [(0, 2, 1.0)] * 9 + [(0, 2, 0.0)]
    ranking = st.bradley_terry_ranking(outcomes, 3, bootstrap=100, seed=1)
    assert [r.index for r in ranking] == [0, 1, 2]
    for r in ranking:
        assert r.low <= r.strength <= r.high
    assert ranking[0].low > ranking[2].high  # the best and the worst are clearly apart
    assert st.bradley_terry_ranking(outcomes, 3, bootstrap=100, seed=1) == ranking  # seeded: reproducible


def test_mean_interval_is_a_t_interval():
    m = st.mean_interval([1, 2, 3, 4, 5])
    # mean 3, sd 1.5811, sem 0.7071, t(0.975, 4) = 2.7764 -> 3 ± 1.9632
    assert (m.mean, m.n) == (3.0, 5)
    assert m.low == pytest.approx(1.0368, abs=1e-4) and m.high == pytest.approx(4.9632, abs=1e-4)
    assert st.mean_interval([]) is None


def test_cohen_kappa_for_two_reviewers_by_hand_and_by_sklearn():
    a = ["first", "first", "second", "second", "tie", "first"]
    b = ["first", "second", "second", "second", "tie", "first"]
    labels = {i: {"ann": x, "bob": y} for i, (x, y) in enumerate(zip(a, b, strict=True))}
    result = st.agreement(labels)
    # p_o = 5/6; p_e = (3·2 + 2·3 + 1·1) / 36 = 13/36; kappa = (30 - 13) / (36 - 13) = 17/23
    assert result.method == "Cohen's kappa" and result.items == 6
    assert result.value == pytest.approx(17 / 23)
    assert result.value == pytest.approx(cohen_kappa_score(a, b))


def test_krippendorff_alpha_for_three_reviewers_by_hand_and_by_the_library():
    labels = {1: {"x": "a", "y": "a", "z": "a"}, 2: {"x": "b", "y": "b", "z": "b"}, 3: {"x": "a", "y": "b"}}
    result = st.agreement(labels)
    # coincidences: o_aa = 3, o_bb = 3, o_ab = o_ba = 1; n_a = n_b = 4, n = 8
    # D_o = 2/8, D_e = 2·4·4 / (8·7) -> alpha = 1 - 0.25 / (32/56) = 0.5625
    assert result.method == "Krippendorff's alpha" and result.reviewers == 3
    assert result.value == pytest.approx(0.5625)
    matrix = np.array([[0, 1, 0], [0, 1, 1], [0, 1, np.nan]])
    assert result.value == pytest.approx(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))


def test_agreement_needs_pairs_judged_twice():
    assert st.agreement({1: {"x": "tie"}, 2: {"y": "first"}}).value is None
    assert st.describe_agreement(0.74) == "substantial"


def test_token_f1_similarity():
    # tokens [hi, maria, thanks] vs [hi, maria, thank, you]: 2 shared -> P 2/3, R 1/2, F1 4/7
    assert st.token_f1("hi maria thanks", "Hi Maria, thank you") == pytest.approx(4 / 7)
    assert st.token_f1("Same words here", "same WORDS here") == 1.0
    assert st.token_f1("nothing", "in common") == 0.0
