"""The results table (Markdown) and its raw data (JSON)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench import chart
from bench.floors import Floors
from bench.scenarios import Config, Row

SCENARIOS = {
    "1": "1. Raw capacity (no latency, no limit)",
    "2": "2. Quota use (published limits, 50–150 ms latency)",
    "3": "3. Backlog drain (batch)",
    "soak": "Soak (steady traffic)",
}
COLUMNS = (
    "Scenario",
    "System",
    "Events",
    "Klaviyo events",
    "Events/s",
    "× baseline",
    "p50 delay",
    "p99 delay",
    "429s",
    "Steady limit used",
    "CPU s",
    "Peak RSS MB",
)


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "kafka": _kafka_version(),
    }


def _kafka_version() -> str:
    try:
        from dev.kafka_broker import kafka_version  # noqa: PLC0415

        return kafka_version()
    except Exception:
        return "unknown"


def baseline_rate(rows: list[Row], scenario: str) -> float | None:
    # Scenario 3 runs on scenario 1's sandbox: its baseline is scenario 1's.
    wanted = "1" if scenario == "3" else scenario
    for row in rows:
        if row.scenario == wanted and row.system.startswith("baseline"):
            return row.events_per_s
    return None


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        base = baseline_rate(rows, row.scenario)
        ratio = "–"
        if base and not row.system.startswith("baseline"):
            ratio = f"{row.events_per_s / base:.1f}×"
        share = "–" if row.steady_share is None else f"{row.steady_share * 100:.1f} %"
        cells = (
            SCENARIOS.get(row.scenario, row.scenario),
            row.system,
            f"{row.events:,}",
            f"{row.klaviyo_events:,}",
            f"{row.events_per_s:,.0f}",
            ratio,
            _seconds(row.p50_s),
            _seconds(row.p99_s),
            str(row.throttled),
            share,
            f"{row.cpu_s:.1f}",
            f"{row.peak_rss_mb:.0f}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Section:
    """A scenario with a table of its own (4, 5) or what could not run: its Markdown, and its
    raw data under ``key`` in the JSON."""

    key: str
    lines: list[str]
    data: list[dict[str, Any]]


def floors_table(rows: list[Row], floors: Floors) -> str:
    """The relay's cost against the floors measured in the same run (bench/floors.py)."""
    lines = [
        f"Floors in this run: codec (fastavro decode + orjson encode) "
        f"{floors.codec_us_per_event:.1f} µs CPU per event; HTTP (bare aiohttp client, "
        f"{floors.http_concurrency} in flight) {floors.http_requests_per_s:,.0f} requests/s at "
        f"{floors.http_us_per_request:.0f} µs CPU per request.",
        "",
        "| Scenario | System | Events | CPU µs/event | drain CPU µs/event | × codec floor "
        "| Klaviyo requests/s | × HTTP floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row.system.startswith("relay") or row.scenario == "2" or not row.events:
            continue
        per_event = row.cpu_s / row.events * 1e6
        drain = drain_cpu_us(row) or per_event
        requests_per_s = row.requests / row.seconds if row.seconds else 0.0
        realtime = "realtime" in row.system
        http = f"{requests_per_s / floors.http_requests_per_s:.2f}" if realtime else "–"
        lines.append(
            f"| {SCENARIOS.get(row.scenario, row.scenario)} | {row.system} | {row.events:,} "
            f"| {per_event:.0f} | {drain:.0f} | {drain / floors.codec_us_per_event:.1f}× "
            f"| {requests_per_s:,.0f} | {http} |"
        )
    return "\n".join(lines)


def drain_cpu_us(row: Row) -> float | None:
    """CPU µs per event from the first accepted event on: start-up (imports, connecting,
    joining the group: seconds of CPU) left out, which a short run would otherwise charge to
    its events. None without the series."""
    first = next(((t, n) for t, n in row.progress_series if n > 0), None)
    if first is None or not row.klaviyo_events:
        return None
    cpu_then = next((cpu for t, _rss, cpu in row.usage_series if t >= first[0]), None)
    events = row.events * (1 - first[1] / row.klaviyo_events)
    if cpu_then is None or events <= 0:
        return None
    return (row.cpu_s - cpu_then) / events * 1e6


def charts(rows: list[Row], out: Path, kind: str) -> list[Path]:
    """RSS and events/s over time for the backlog drains (scenario 3) and soaks."""
    written = []
    for scenario, title in (("3", "Backlog drain, batch mode"), ("soak", "Soak")):
        runs = [r for r in rows if r.scenario == scenario and r.usage_series]
        if not runs:
            continue
        lines = [
            chart.Line(
                f"{r.system}, {r.events:,} events: peak {r.peak_rss_mb:.0f} MB, "
                f"{r.events_per_s:,.0f} events/s",
                [(t, rss) for t, rss, _cpu in r.usage_series],
                chart.rates(r.progress_series, r.klaviyo_events / max(r.events, 1)),
            )
            for r in runs
        ]
        written.append(chart.write(out / f"{kind}-{scenario}.svg", lines, title))
    return written


def write(
    rows: list[Row],
    config: Config,
    out: Path,
    took: float,
    argv: list[str],
    *,
    sections: Sequence[Section] = (),
    floors: Floors | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    kind = "quick" if config.quick else "full"
    info = machine()
    head = [
        f"# Benchmark results ({kind} run)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB, {info['os']}, "
        f"Python {info['python']}, Kafka {info['kafka']}. Suite took {took / 60:.1f} min.",
        f"Command: `python -m bench {' '.join(argv)}`",
        "",
        table(rows),
        "",
        *([floors_table(rows, floors), ""] if floors else []),
        *[f"![{p.stem}]({p.name})" for p in charts(rows, out, kind)],
        "",
        "Notes per run:",
        "",
    ]
    notes = [f"- {r.scenario} / {r.system}: " + "; ".join(r.notes) for r in rows]
    for section in sections:
        notes += ["", *section.lines]
    path = out / f"{kind}.md"
    path.write_text("\n".join(head + notes) + "\n")
    payload: dict[str, Any] = {
        "kind": kind,
        "machine": info,
        "took_s": took,
        "floors": asdict(floors) if floors else None,
        "rows": [_without_series(asdict(r)) for r in rows],
    }
    payload.update({section.key: section.data for section in sections})
    (out / f"{kind}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _without_series(row: dict[str, Any]) -> dict[str, Any]:
    """A row for the JSON file: the series are in the chart, not in the table's data."""
    return {key: value for key, value in row.items() if not key.endswith("_series")}
