"""The ``etcdgw`` command: ``etcdgw serve [flags]``, ``etcdgw snapshot restore`` and
``etcdgw --version``.

``snapshot restore SNAPSHOT --data-dir DIR`` turns a file saved with ``etcdctl snapshot save``
from etcdgw back into a data dir (see etcdgw.snapshot); exit 1 if it cannot (bad digest, data dir
not empty).

``serve`` runs one gateway on uvloop until SIGINT or SIGTERM, then shuts down gracefully (see
etcdgw.gateway) and exits 0. A second signal during shutdown is not caught: it interrupts the
process, for an operator who cannot wait. Exit status 2 is a usage or configuration error, 1 a
failure to start (port in use, unreadable certificate, backend that will not open).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import uvloop

from etcdgw.backends import BackendError
from etcdgw.config import Config, ConfigError, add_arguments
from etcdgw.gateway import Gateway
from etcdgw.version import ETCD_VERSION, __version__

__all__ = ["main", "serve"]

log = logging.getLogger("etcdgw")

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etcdgw", description="An asyncio gateway serving the etcd v3 API (gRPC)."
    )
    parser.add_argument(
        "--version", action="version", version=f"etcdgw {__version__} (etcd API {ETCD_VERSION})"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="serve the etcd v3 API",
        description="Serve the etcd v3 API. Every flag can also be set as ETCDGW_<FLAG>.",
    )
    add_arguments(serve_parser)
    snapshot_parser = commands.add_parser("snapshot", help="restore a snapshot")
    snapshot_commands = snapshot_parser.add_subparsers(
        dest="snapshot_command", required=True, metavar="COMMAND"
    )
    restore = snapshot_commands.add_parser(
        "restore",
        help="create a data dir from a snapshot file",
        description="Create a data dir from a snapshot saved with `etcdctl snapshot save`: same "
        "keys, revisions and leases, new cluster and member ids (as etcd's restore).",
    )
    restore.add_argument("snapshot", metavar="SNAPSHOT", help="the snapshot file")
    restore.add_argument(
        "--data-dir", required=True, help="data dir to create (must not exist or be empty)"
    )
    restore.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="the file is a bare database (e.g. copied from a data dir), not a snapshot",
    )
    return parser


def _restore(args: argparse.Namespace) -> int:
    from etcdgw.snapshot import SnapshotError, restore

    try:
        cluster_id, member_id = restore(
            args.snapshot, args.data_dir, skip_hash_check=args.skip_hash_check
        )
    except (OSError, SnapshotError) as exc:
        print(f"etcdgw: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored snapshot {args.snapshot} into {args.data_dir} "
        f"(cluster {cluster_id:x}, member {member_id:x})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "snapshot":
        return _restore(args)
    try:
        config = Config.from_namespace(args)
    except ConfigError as exc:
        print(f"etcdgw: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.logging_level, format=_LOG_FORMAT, stream=sys.stderr)
    return uvloop.run(serve(config))


async def serve(config: Config) -> int:
    """Run a gateway until SIGINT/SIGTERM; the exit status for main()."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        for sig in signals:
            loop.remove_signal_handler(sig)  # a second signal interrupts the shutdown
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    gateway = Gateway(config)
    try:
        await gateway.start()
    except (ConfigError, OSError, BackendError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        await stop.wait()
    finally:
        await gateway.close()
    return 0
