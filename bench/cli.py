"""``python -m bench WORKLOAD [options]`` | ``python -m bench plot RESULTS.json`` | ``... smoke``.

Targets are measured alternately, A B A B, per clients level; each figure is reported as the median
over the rounds with the min-max, and the ratio etcdgw/etcd. See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.targets import KINDS, Target, Tls, parse_endpoint, start
from bench.workloads import WORKLOADS, get_workload
from bench.workloads.base import Params, Workload


def _clients(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,16,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("clients must be >= 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    names = "\n".join(
        f"  {n:<18} {w.summary}{'' if w.implemented else '  (not implemented yet)'}"
        for n, w in WORKLOADS.items()
    )
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark etcd v3 endpoints (etcdgw vs etcd), alternating A B A B.",
        epilog=f"workloads:\n{names}\n\nalso: python -m bench plot RESULTS.json | "
        "python -m bench smoke",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workload", choices=list(WORKLOADS), metavar="WORKLOAD")
    t = p.add_argument_group("targets (measured in the order given)")
    t.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="an etcd v3 endpoint to measure (repeatable)",
    )
    t.add_argument(
        "--start",
        action="append",
        default=[],
        choices=KINDS,
        help="start this server on a free loopback port, temporary data dir",
    )
    t.add_argument("--cacert", help="verify --endpoint servers with this CA bundle (TLS)")
    t.add_argument("--cert", help="client certificate for --endpoint servers (mTLS)")
    t.add_argument("--key", help="client certificate key")
    t.add_argument("--etcd-bin", default="etcd", help="etcd binary for --start etcd")
    t.add_argument(
        "--etcdgw-python",
        default=sys.executable,
        help="interpreter for --start etcdgw (default: this one)",
    )
    r = p.add_argument_group("runs")
    r.add_argument("--rounds", type=int, default=3, help="runs per target (default 3)")
    r.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    r.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each run")
    r.add_argument("--max-ops", type=int, default=1_000_000, help="operations per run at most")
    r.add_argument("--clients", type=_clients, help="concurrent clients, e.g. 1,16,64")
    r.add_argument("--procs", type=int, help="client processes (default 1; watch-fanout 2)")
    r.add_argument("--channels", type=int, default=2, help="gRPC connections per client process")
    r.add_argument("--keys", type=int, help="keys to load (workload default)")
    r.add_argument("--value-size", type=int, help="value bytes (workload default)")
    r.add_argument("--page-size", type=int, default=500, help="range-list-paged page size")
    s = p.add_argument_group("streams (watch-latency, watch-fanout, lease-keepalive)")
    s.add_argument(
        "--rate",
        type=float,
        help="writes/s (watch-*: default 200 latency, 100 fanout); keepalives per "
        "lease per second (lease-keepalive: default 1)",
    )
    s.add_argument(
        "--watchers",
        type=_clients,
        help="watchers, paired with --streams (watch-fanout default 1000,10000)",
    )
    s.add_argument(
        "--streams", type=_clients, help="streams (watch-fanout default 10,100; lease-keepalive 10)"
    )
    s.add_argument("--leases", type=_clients, help="leases kept alive (default 1000)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="results directory (default bench/results)")
    o.add_argument("--no-json", action="store_true", help="do not write the JSON result")
    o.add_argument(
        "--progress",
        choices=("auto", "yes", "no"),
        default="auto",
        help="progress lines on stderr (auto: when it is a TTY)",
    )
    return p


class Progress:
    def __init__(self, mode: str) -> None:
        self.on = mode == "yes" or (mode == "auto" and sys.stderr.isatty())

    def __call__(self, msg: str) -> None:
        if self.on:
            print(msg, file=sys.stderr, flush=True)


def open_targets(args: argparse.Namespace, progress: Progress) -> list[Target]:
    tls = Tls(args.cacert, args.cert, args.key)
    targets: list[Target] = []
    try:
        for spec in args.endpoint:
            targets.append(parse_endpoint(spec, tls))
        for kind in args.start:
            progress(f"starting {kind} ...")
            targets.append(start(kind, etcd_bin=args.etcd_bin, python=args.etcdgw_python))
            progress(f"  {kind} serving at {targets[-1].endpoint} (pid {targets[-1].pid})")
    except BaseException:
        for t in targets:
            t.close()
        raise
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        for t in targets:
            t.close()
        raise SystemExit(f"target names must differ: {names}")
    return targets


def params_for(wl: Workload, args: argparse.Namespace, level: dict[str, Any], tag: int) -> Params:
    return Params(
        clients=level["clients"],
        duration=args.duration,
        warmup=args.warmup,
        max_ops=args.max_ops,
        procs=args.procs or wl.default_procs,
        channels=args.channels,
        keys=args.keys if args.keys is not None else wl.default_keys,
        value_size=args.value_size if args.value_size is not None else wl.default_value_size,
        page_size=args.page_size,
        run_tag=tag,
        rate=args.rate or 0.0,
        watchers=level.get("watchers", 0),
        streams=level.get("streams", 0),
        leases=level.get("leases", 0),
    )


def measure(
    wl: Workload, targets: list[Target], args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    """Every clients level x round x target, alternating; returns the JSON result."""
    from bench import report, runner

    names = [t.name for t in targets]
    pair = report.ratio_pair(names)
    levels = wl.levels(args)
    base = params_for(wl, args, levels[0], 0)
    versions: dict[str, str | None] = {}
    states: dict[str, Any] = {}
    if wl.stream:
        from bench.runner import server_version

        versions = {t.name: server_version(t) for t in targets}
    elif not wl.custom:
        for t in targets:
            progress(f"loading {wl.name} keys into {t.name} ...")
            states[t.name], versions[t.name] = runner.prepare(t, wl.name, base)
    groups = []
    tag = 0
    for level in levels:
        clients, label = level["clients"], level["label"]
        runs: list[dict[str, Any]] = []
        for rnd in range(1, args.rounds + 1):
            for t in targets:
                tag += 1
                params = params_for(wl, args, level, tag)
                if wl.stream:
                    runs.append(wl.run_round(t, params, rnd))
                    figures = runs[-1]["figures"]
                elif wl.custom:
                    figures = wl.run_round(t, params, rnd)
                    runs.append(
                        {
                            "target": t.name,
                            "round": rnd,
                            "figures": figures,
                            "errors": 0,
                            "client_saturated": False,
                            "client_cpu_per_proc": [],
                        }
                    )
                else:
                    res = runner.run_once(t, wl.name, params, states[t.name], rnd)
                    runs.append(report.run_figures(wl, res))
                    figures = runs[-1]["figures"]
                shown = ", ".join(
                    f"{k} {report.fmt(figures[k])}" for k in wl.figures if k in figures
                )
                progress(f"  {label} round {rnd}/{args.rounds} {t.name}: {shown}")
        medians = report.summarize(runs, names)
        group = {
            "clients": clients,
            "label": label,
            "level": {k: v for k, v in level.items() if k != "label"},
            "runs": runs,
            "medians": medians,
            "ratios": report.ratios(medians, pair),
        }
        groups.append(group)
        print(report.table(wl, group, names, pair), flush=True)
        print(flush=True)
    return {
        "workload": wl.name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "parameters": {
            "clients": [lv["clients"] for lv in levels],
            "levels": [lv["label"] for lv in levels],
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "max_ops": args.max_ops,
            "procs": base.procs,
            "channels": args.channels,
            "keys": base.keys,
            "value_size": base.value_size,
            "page_size": base.page_size,
            **(
                {"rate": args.rate or getattr(wl, "default_rate", None), "leases": base.leases}
                if wl.stream
                else {}
            ),
        },
        "targets": [{**t.describe(), "version": versions.get(t.name)} for t in targets],
        "ratio": f"{pair[0]}/{pair[1]}" if pair else None,
        "figures": [*wl.figures, *report.CPU_FIGURES],
        "results": groups,
        "machine": report.machine_facts(args.etcd_bin),
    }


def run_workload(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    wl = get_workload(args.workload)
    if not wl.implemented:
        print(
            f"{wl.name}: not implemented yet (needs {getattr(wl, 'needs', 'more of etcdgw')})",
            file=sys.stderr,
        )
        return 2
    if not args.endpoint and not args.start:
        print(
            "no targets: give --endpoint NAME=HOST:PORT and/or --start etcdgw|etcd", file=sys.stderr
        )
        return 2
    if wl.custom and args.endpoint:
        print(
            f"{wl.name}: only for servers the bench starts (--start), not --endpoint",
            file=sys.stderr,
        )
        return 2
    if args.rounds < 1 or args.duration <= 0 or (args.procs or 1) < 1 or args.max_ops < 1:
        print("--rounds, --duration, --procs, --max-ops must be positive", file=sys.stderr)
        return 2
    progress = Progress(args.progress)
    targets = open_targets(args, progress)
    try:
        result = measure(wl, targets, args, progress)
    finally:
        for t in targets:
            t.close()
    if not args.no_json:
        from bench import report

        path = report.write_json(result, args.out or report.RESULTS_DIR)
        print(f"results: {path}")
    errors = sum(r.get("errors", 0) for g in result["results"] for r in g["runs"])
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plot"]:
        from bench.plot import main as plot_main

        return plot_main(argv[1:])
    if argv[:1] == ["smoke"]:
        from bench.smoke import main as smoke_main

        return smoke_main(argv[1:])
    try:
        return run_workload(argv)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
