"""The ``etcdgw`` command: ``etcdgw serve [flags]`` and ``etcdgw --version``.

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
