"""Scenarios 4 (outage recovery) and 5 (a group scaled 1 → 3 → 1) in the suite: their options,
their sandboxes, one run per send mode, and their sections of the report.

A send mode this relay does not know yet (``auto`` before it is merged) is reported as not
available, never a failure of the suite.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

from bench import group, outage
from bench.report import Section
from bench.scenarios import Bench, InstrumentedSandbox
from bench.steady import unavailable

T = TypeVar("T")
MODES = "realtime,batch,auto"
GROUP_MODES = "realtime,auto"
# --quick (CI) proves the machinery in one mode each, to stay short.
QUICK_MODES = ("realtime",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--modes", default=MODES, help=f"send modes of scenarios 2 and 4 (default {MODES})"
    )
    parser.add_argument(
        "--outage", type=float, metavar="SECONDS", help="scenario 4's outage (600; --quick 10)"
    )
    parser.add_argument(
        "--group-modes", default=GROUP_MODES, help=f"scenario 5's send modes ({GROUP_MODES})"
    )
    parser.add_argument(
        "--group-phase",
        type=float,
        metavar="SECONDS",
        help="scenario 5's length of each phase (240; --quick 10)",
    )


def modes(raw: str) -> list[str]:
    return [mode.strip() for mode in raw.split(",") if mode.strip()]


def available(scenario: str, wanted: list[str], skipped: list[str]) -> list[str]:
    """The modes of ``wanted`` this relay knows; a note in ``skipped`` for each other one."""
    out = []
    for mode in wanted:
        why = unavailable(mode)
        if why is None:
            out.append(mode)
        else:
            skipped.append(f"{scenario} / relay {mode}: not available: {why}")
    return out


def not_available(skipped: list[str]) -> Section:
    lines = ["Not available:", "", *[f"- {note}" for note in skipped]] if skipped else []
    return Section("not_available", lines, [{"note": note} for note in skipped])


def run(bench: Bench, only: set[str], args: argparse.Namespace) -> list[Section]:
    quick = bench.config.quick
    sections = []
    if "4" in only:
        make_plan = outage.OutagePlan.quick if quick else outage.OutagePlan.full
        plan = make_plan(args.outage) if args.outage else make_plan()
        wanted = list(QUICK_MODES) if quick and args.modes == MODES else modes(args.modes)

        def recover(sandbox: InstrumentedSandbox, mode: str) -> outage.OutageResult:
            _step(f"4: relay {mode}, {plan.outage_s:g} s outage at {plan.rate:g} events/s")
            return outage.run(bench, sandbox, plan, mode)

        results = _each_mode(bench, "4", wanted, recover)
        sections.append(Section("outage", outage.markdown(results), outage.data(results)))
    if "5" in only:
        make_shape = group.GroupPlan.quick if quick else group.GroupPlan.full
        shape = make_shape(args.group_phase) if args.group_phase else make_shape()
        wanted = (
            list(QUICK_MODES)
            if quick and args.group_modes == GROUP_MODES
            else modes(args.group_modes)
        )

        def scale(sandbox: InstrumentedSandbox, mode: str) -> group.GroupResult:
            _step(f"5: relays {mode}, 1 → 3 → 1, {shape.phase_s:g} s phases")
            return group.run(bench, sandbox, shape, mode)

        found = _each_mode(bench, "5", wanted, scale)
        sections.append(Section("group", group.markdown(found), group.data(found)))
    return sections


def _each_mode(
    bench: Bench,
    scenario: str,
    wanted: list[str],
    run_one: Callable[[InstrumentedSandbox, str], T],
) -> list[T]:
    """``run_one`` per mode on one sandbox with the published limits (the quick ones in
    ``--quick``) and scenario 2's latency."""
    config = bench.config
    sandbox = InstrumentedSandbox(
        limits=config.limits,
        latency_ms=config.latency_ms,
        log=bench.workdir / f"sandbox-{scenario}.log",
    )
    try:
        return [run_one(sandbox, mode) for mode in wanted]
    finally:
        sandbox.stop(30)


def _step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
