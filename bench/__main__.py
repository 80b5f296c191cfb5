"""``python -m bench [--quick] [--only 1,2,3,4,5] [--bootstrap HOST:PORT] [--out DIR]``.

``--only 6``: the kill -9 scenario (:mod:`bench.crash`), not run by default.
``--only 7``: two accounts in one relay (:mod:`bench.accounts`), not run by default.
``--only 8 [--oauth-soak SECONDS]``: the OAuth soak (:mod:`bench.oauthsoak`), not run by default.

Starts a Kafka broker (unless ``--bootstrap``), creates the contract's topics, runs the
scenarios and writes ``<out>/full.md`` (or ``quick.md``) and its JSON beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import accounts, crash, more, oauthsoak, report
from bench.scenarios import (
    DLQ_TOPIC,
    FULL,
    OVERSUBSCRIBE,
    PARTITIONS,
    QUICK,
    Bench,
    InstrumentedSandbox,
)
from bench.soak import soak_run
from consumer.topics import CONTRACT_TOPICS
from dev.kafka_broker import KafkaBroker

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small and short: proves it works")
    parser.add_argument("--only", default="1,2,3,4,5", help="scenarios to run, e.g. 1,3")
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", action="store_true", help="also run scenario 1 under py-spy")
    parser.add_argument("--events", type=int, help="scenario 1 events per mode")
    parser.add_argument("--backlog", type=int, help="scenario 3 backlog")
    more.add_arguments(parser)
    parser.add_argument(
        "--accounts-modes",
        default=accounts.MODES,
        help=f"scenario 7's send modes (default {accounts.MODES})",
    )
    parser.add_argument(
        "--crash-modes",
        default=",".join(crash.MODES),
        help=f"scenario 6's send modes (default {','.join(crash.MODES)})",
    )
    parser.add_argument("--backlog-sizes", help="scenario 3 backlogs, e.g. 100000,1000000,5000000")
    parser.add_argument(
        "--memprobe", action="store_true", help="run the relay under bench.memprobe"
    )
    parser.add_argument("--no-floors", action="store_true", help="skip the codec/HTTP floors")
    parser.add_argument("--soak", type=float, default=0, help="also soak for SECONDS")
    parser.add_argument("--soak-rate", type=float, default=2000, help="soak events/s")
    parser.add_argument("--soak-mode", default="batch", choices=("batch", "realtime"))
    parser.add_argument(
        "--oauth-soak",
        type=float,
        help="scenario 8's length in seconds (default 30 with --quick, else 600)",
    )
    parser.add_argument(
        "--oauth-token-lifetime",
        type=int,
        default=oauthsoak.LIFETIME_S,
        help="scenario 8: the sandbox's access-token lifetime in seconds",
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.events:
        config = replace(config, events=args.events)
    if args.backlog:
        config = replace(config, backlog=args.backlog)
    if args.backlog_sizes:
        sizes = tuple(int(size) for size in args.backlog_sizes.split(","))
        config = replace(config, backlog_sizes=sizes)
    only = set(args.only.split(","))
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    print(f"logs in {workdir}", flush=True)
    broker = KafkaBroker.external(args.bootstrap) if args.bootstrap else KafkaBroker.start()
    try:
        broker.create_topics(CONTRACT_TOPICS, partitions=PARTITIONS)
        broker.create_topics([DLQ_TOPIC])
        bench = Bench(config, broker.bootstrap_servers, workdir)
        bench.memprobe = args.memprobe
        skipped: list[str] = []
        run(bench, only, args.profile, more.modes(args.modes), skipped, floors=not args.no_floors)
        if args.soak:
            run_soak(bench, args.soak, args.soak_rate, args.soak_mode)
        sections = [
            *more.run(bench, only, args),
            more.not_available(skipped),
            *crash.run(bench, only, tuple(more.modes(args.crash_modes))),
            *accounts.run(bench, only, more.modes(args.accounts_modes)),
            *oauthsoak.run(
                bench,
                only,
                args.oauth_soak or (30 if args.quick else 600),
                args.oauth_token_lifetime,
                args.out,
            ),
        ]
    finally:
        broker.stop()
    took = time.monotonic() - began
    path = report.write(
        bench.rows, config, args.out, took, argv, sections=sections, floors=bench.floors
    )
    print(path.read_text())
    return 0


def run(
    bench: Bench,
    only: set[str],
    profile: bool,
    modes: list[str],
    skipped: list[str],
    *,
    floors: bool = True,
) -> None:
    config = bench.config
    logs = bench.workdir
    if only & {"1", "3"}:
        sandbox = InstrumentedSandbox(limits=None, latency_ms=None, log=logs / "sandbox-1.log")
        try:
            if floors:
                _step("floors: codec and HTTP (bench/floors.py)")
                bench.measure_floors(sandbox)
            if "1" in only:
                for mode in ("realtime", "batch"):
                    _step(f"1: relay {mode}, {config.events} events")
                    bench.backlog_run("1", sandbox, config.events, f"relay {mode}", mode=mode)
                _step(f"1: baseline, {config.baseline_events} events")
                bench.backlog_run("1", sandbox, config.baseline_events, "baseline (klaviyo-api)")
                if profile:
                    for mode in ("realtime", "batch"):
                        _step(f"1: relay {mode} under py-spy (not in the table)")
                        bench.backlog_run(
                            "1", sandbox, config.events, f"relay {mode}", mode=mode, profile=True
                        )
                        bench.rows.pop()
            if "3" in only:
                for count in config.backlog_sizes or (config.backlog // 10, config.backlog):
                    _step(f"3: relay batch, backlog of {count} events")
                    bench.backlog_run("3", sandbox, count, "relay batch", mode="batch")
        finally:
            sandbox.stop(30)
    if "2" in only:
        sandbox = InstrumentedSandbox(
            limits=config.limits, latency_ms=config.latency_ms, log=logs / "sandbox-2.log"
        )
        try:
            create = config.limits["create_event"].steady
            bulk = config.limits["bulk_create_events"].steady
            realtime = OVERSUBSCRIBE * create.requests / create.seconds / bench.per_event
            batch = OVERSUBSCRIBE * bulk.requests * 1000 / bulk.seconds / bench.per_event
            for mode in more.available("2", modes, skipped):
                # auto at realtime's demand: Create Event full, the 10 % over it in bulk jobs.
                rate = batch if mode == "batch" else realtime
                _step(f"2: relay {mode} at {rate:.0f} events/s")
                bench.quota_run(sandbox, f"relay {mode}", mode, config.quota_windows, rate)
            _step(f"2: baseline at {realtime:.0f} events/s")
            bench.quota_run(
                sandbox, "baseline (klaviyo-api)", "realtime", config.baseline_windows, realtime
            )
        finally:
            sandbox.stop(30)


def run_soak(bench: Bench, seconds: float, rate: float, mode: str) -> None:
    log = bench.workdir / "sandbox-soak.log"
    sandbox = InstrumentedSandbox(limits=None, latency_ms=None, log=log)
    try:
        _step(f"soak: relay {mode}, {seconds:.0f} s at {rate:.0f} events/s")
        soak_run(bench, sandbox, seconds=seconds, rate=rate, mode=mode)
    finally:
        sandbox.stop(30)


def _step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
