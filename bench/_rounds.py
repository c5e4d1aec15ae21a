"""Alternating rounds for the benchmarks that compare two sides (ours vs a baseline, B vs A).

One pair of measurements says little on a shared or noisy machine: the load changes within minutes, and the
side that runs first pays warm-up (first-call allocations, page cache). So each script measures its two sides
alternately, ``A B A B ...``, for ``--rounds`` rounds (3 by default), prints every round, and ends with

    ratio=<median> (min <x>, max <y>, rounds N)

where each round's ratio compares that round's two measurements (both suffered the same load). Used by
train_throughput, generate_throughput, serve_throughput, serve_llamacpp, import_speed_ab and
cancel_latency.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

DEFAULT_ROUNDS = 3


def add_rounds_argument(parser: argparse.ArgumentParser, default: int = DEFAULT_ROUNDS) -> None:
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=default,
        help=f"alternating rounds of both sides (default {default}); the last line is their median",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--rounds must be at least 1, not {value}")
    return value


def ratio_line(ratios: list[float], digits: int = 2) -> str:
    """``ratio=<median> (min <x>, max <y>, rounds N)``: the last line of every two-sided benchmark."""
    if not ratios:
        raise ValueError("no rounds were measured")
    f = f".{digits}f"
    return f"ratio={statistics.median(ratios):{f}} (min {min(ratios):{f}}, max {max(ratios):{f}}, rounds {len(ratios)})"


def alternate(
    rounds: int,
    first: Callable[[int], Any],
    second: Callable[[int], Any],
    ratio: Callable[[Any, Any], float],
    describe: Callable[[Any, Any], str] | None = None,
    digits: int = 2,
    out: Callable[[str], None] | None = None,
) -> list[float]:
    """Run ``first(n)`` then ``second(n)`` for rounds n = 1..rounds; print each round and the ratio line last.

    ``ratio(a, b)`` turns a round's two measurements into its ratio; ``describe(a, b)`` words them for the
    round's line. Returns the rounds' ratios."""
    out = out or (lambda line: print(line, flush=True))
    ratios: list[float] = []
    for n in range(1, rounds + 1):
        a = first(n)
        b = second(n)
        ratios.append(ratio(a, b))
        detail = f"{describe(a, b)}, " if describe else ""
        out(f"round {n}: {detail}ratio {ratios[-1]:.{digits}f}")
    out(ratio_line(ratios, digits))
    return ratios
