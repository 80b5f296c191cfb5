"""RSS and events/s over time as an SVG chart, written by hand (no plotting dependency).

Two panels share the time axis (seconds since the relay started): the relay's resident memory
(MB, sampled by ``measure.py``) and the domain events per second the sandbox accepted
(``Row.progress_series``, as a rate over ``RATE_WINDOW`` seconds so the line is readable).
One line per run, so backlogs of different sizes, or a soak, lie on top of each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

WIDTH, PANEL, MARGIN_LEFT, MARGIN_TOP, GAP = 860, 220, 70, 40, 60
PLOT_WIDTH = WIDTH - MARGIN_LEFT - 30
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
RATE_WINDOW = 5.0  # seconds
MAX_POINTS = 600  # per line: enough for the eye, small files


@dataclass(frozen=True)
class Line:
    label: str
    rss: Sequence[tuple[float, float]]  # (seconds, MB)
    rate: Sequence[tuple[float, float]]  # (seconds, events/s)


def rates(progress: Sequence[tuple[float, int]], per_event: float) -> list[tuple[float, float]]:
    """Domain events/s from (seconds, accepted Klaviyo events) samples, over RATE_WINDOW."""
    out: list[tuple[float, float]] = []
    start = 0
    for t, accepted in progress:
        while progress[start][0] < t - RATE_WINDOW:
            start += 1
        t0, a0 = progress[start]
        if t - t0 >= RATE_WINDOW / 2:
            out.append((t, (accepted - a0) / (t - t0) / per_event))
    return out


def _thin(points: Sequence[tuple[float, float]]) -> Sequence[tuple[float, float]]:
    step = max(1, len(points) // MAX_POINTS)
    return points[::step]


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if top <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(top))) - 1)
    for factor in (1, 2, 2.5, 5, 10):
        if top <= factor * magnitude:
            return float(factor * magnitude)
    return float(10 * magnitude)


def _panel(
    lines: Sequence[Line], pick: str, top_y: float, t_max: float, *, title: str, unit: str
) -> list[str]:
    values = [v for line in lines for _, v in getattr(line, pick)]
    y_max = _nice(max(values, default=1.0) * 1.05)
    out = [
        f'<text x="{MARGIN_LEFT}" y="{top_y - 10}" font-size="14" font-weight="bold">'
        f"{escape(title)}</text>",
        f'<rect x="{MARGIN_LEFT}" y="{top_y}" width="{PLOT_WIDTH}" height="{PANEL}" '
        'fill="none" stroke="#999"/>',
    ]
    for i in range(5):
        value = y_max * i / 4
        y = top_y + PANEL - PANEL * i / 4
        out.append(
            f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + PLOT_WIDTH}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{value:,.0f}</text>"
        )
    out.append(
        f'<text x="14" y="{top_y + PANEL / 2}" font-size="11" '
        f'transform="rotate(-90 14 {top_y + PANEL / 2})" text-anchor="middle">{unit}</text>'
    )
    for index, line in enumerate(lines):
        points = " ".join(
            f"{MARGIN_LEFT + PLOT_WIDTH * t / t_max:.1f},{top_y + PANEL - PANEL * v / y_max:.1f}"
            for t, v in _thin(getattr(line, pick))
        )
        colour = COLOURS[index % len(COLOURS)]
        out.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        )
    return out


def svg(lines: Sequence[Line], title: str) -> str:
    t_max = max((t for line in lines for t, _ in (*line.rss, *line.rate)), default=1.0) or 1.0
    # The rate panel only when some run has one (a memprobe file alone has RSS only).
    second = MARGIN_TOP + PANEL + GAP if any(line.rate for line in lines) else 0
    axis_y = (second or MARGIN_TOP) + 20 + PANEL
    height = axis_y + 50 + 18 * len(lines)
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>',
        f'<text x="{MARGIN_LEFT}" y="20" font-size="15">{escape(title)}</text>',
        *_panel(lines, "rss", MARGIN_TOP + 20, t_max, title="Resident memory", unit="MB"),
    ]
    if second:
        body += _panel(
            lines, "rate", second + 20, t_max, title="Events per second", unit="events/s"
        )
    for i in range(6):
        x = MARGIN_LEFT + PLOT_WIDTH * i / 5
        body.append(
            f'<text x="{x:.1f}" y="{axis_y + 16}" font-size="11" text-anchor="middle">'
            f"{t_max * i / 5:,.0f} s</text>"
        )
    for index, line in enumerate(lines):
        y = axis_y + 40 + 18 * index
        colour = COLOURS[index % len(COLOURS)]
        body.append(
            f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + 24}" y1="{y - 4}" y2="{y - 4}" '
            f'stroke="{colour}" stroke-width="3"/><text x="{MARGIN_LEFT + 32}" y="{y}" '
            f'font-size="12">{escape(line.label)}</text>'
        )
    body.append("</svg>")
    return "\n".join(body) + "\n"


def write(path: Path, lines: Sequence[Line], title: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg(lines, title))
    return path
