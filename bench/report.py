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

from bench.scenarios import Config, Row

SCENARIOS = {
    "1": "1. Raw capacity (no latency, no limit)",
    "2": "2. Quota use (published limits, 50–150 ms latency)",
    "3": "3. Backlog drain (batch)",
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


def write(
    rows: list[Row],
    config: Config,
    out: Path,
    took: float,
    argv: list[str],
    *,
    sections: Sequence[Section] = (),
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
        "rows": [asdict(r) for r in rows],
    }
    payload.update({section.key: section.data for section in sections})
    (out / f"{kind}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return path
