"""bench/_rounds.py: two-sided benchmarks alternate their sides and end with the median ratio and its range."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from _rounds import add_rounds_argument, alternate, ratio_line  # noqa: E402


def test_sides_alternate_every_round_is_printed_and_the_last_line_is_the_median_with_its_range():
    calls, lines = [], []
    times = {"a": [10.0, 30.0, 10.0, 10.0], "b": [5.0, 10.0, 2.0, 4.0]}

    def side(name):
        def run(n):
            calls.append(f"{name}{n}")
            return times[name][n - 1]

        return run

    ratios = alternate(
        4,
        side("a"),
        side("b"),
        ratio=lambda a, b: a / b,
        describe=lambda a, b: f"A {a:.0f} s, B {b:.0f} s",
        out=lines.append,
    )
    assert calls == ["a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"]
    assert ratios == [2.0, 3.0, 5.0, 2.5]
    assert lines[:4] == [
        "round 1: A 10 s, B 5 s, ratio 2.00",
        "round 2: A 30 s, B 10 s, ratio 3.00",
        "round 3: A 10 s, B 2 s, ratio 5.00",
        "round 4: A 10 s, B 4 s, ratio 2.50",
    ]
    assert lines[-1] == "ratio=2.75 (min 2.00, max 5.00, rounds 4)"


def test_ratio_line_digits_and_no_rounds():
    assert ratio_line([12.4, 6.3, 20.8], digits=1) == "ratio=12.4 (min 6.3, max 20.8, rounds 3)"
    with pytest.raises(ValueError, match="no rounds"):
        ratio_line([])


def test_rounds_default_to_three_and_must_be_positive(capsys):
    parser = argparse.ArgumentParser()
    add_rounds_argument(parser)
    assert parser.parse_args([]).rounds == 3
    assert parser.parse_args(["--rounds", "5"]).rounds == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["--rounds", "0"])
    assert "--rounds must be at least 1, not 0" in capsys.readouterr().err
