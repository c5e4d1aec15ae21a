"""The project home's drift chart: each served run's weekly share of questions with nothing close in its data, as
bars drawn on the server (an SVG, like the runs' loss chart), the project's threshold as a line across."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT, GAP = 320, 90, 4


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    percent: int
    week: object  # the Monday the week starts on
    inputs: int


@dataclass
class DriftChart:
    run: object
    drifted: str  # why it is marked "not evaluated on current traffic", or ""
    bars: list[Bar]
    threshold_y: float
    threshold_percent: int
    model: str = ""  # the run's model id: the traffic page filtered to it, where a sample is reviewed blind
    width: int = WIDTH
    height: int = HEIGHT


def drift_charts(project) -> list[DriftChart]:
    """One chart per run with measured weeks (``traffic.selectors.drift_lines``), oldest week on the left."""
    from apps.api.selectors import completion_storage, run_model_id
    from apps.traffic.selectors import drift_lines

    lines = drift_lines(project)
    if not lines:
        return []
    threshold = completion_storage(project).drift_threshold
    charts = []
    for line in lines:
        weeks = line.weeks[-8:]
        step = WIDTH / max(len(weeks), 1)
        bars = [
            Bar(
                x=round(i * step + GAP / 2, 1),
                y=round(HEIGHT * (1 - w.share), 1),
                width=round(step - GAP, 1),
                height=round(HEIGHT * w.share, 1),
                percent=round(100 * w.share),
                week=w.week,
                inputs=w.inputs,
            )
            for i, w in enumerate(weeks)
        ]
        charts.append(
            DriftChart(
                line.run,
                line.drifted,
                bars,
                round(HEIGHT * (1 - threshold), 1),
                round(100 * threshold),
                run_model_id(line.run),
            )
        )
    return charts
