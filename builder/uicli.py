"""``bpfdepot ui``: this node's web view — service map, latency, drops, flame graphs, instances.

    bpfdepot ui                                   http://127.0.0.1:8437, the default store
    bpfdepot ui --listen 127.0.0.1:9000 --db /var/lib/bpfdepot/events.sqlite
    bpfdepot ui --agent-socket /run/bpfdepot/agent.sock

Read-only: it serves GET only, opens the store read-only and asks the agent nothing but ``ps``;
the one file it writes is its own rollup cache (``--cache``, default ``<store>.ui-cache``).
The pages and the JSON API are described in loader/ui/API.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from loader.errors import BpfDepotError
from loader.model.settings import Settings

DEFAULT_LISTEN = "127.0.0.1:8437"


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    from loader.agent.protocol import socket_path
    from loader.model.storage import load_storage
    from loader.ui import UiError
    from loader.ui.live import OverSocket
    from loader.ui.server import open_ui

    if args.db:
        db = Path(args.db).resolve()
    else:
        db = load_storage(os.environ, settings.home, Path(args.config) if args.config else None).tsdb.path
    live = OverSocket(socket_path(args.agent_socket))
    try:
        server = open_ui(db, live, args.listen, allow_remote=args.allow_remote,
                         cache=Path(args.cache) if args.cache else None, say=_err)
    except UiError as exc:
        raise BpfDepotError(exc.message, hint=exc.fix) from None
    except OSError as exc:
        raise BpfDepotError(f"cannot listen on {args.listen}: {exc.strerror}",
                            hint="pick another port: --listen 127.0.0.1:PORT (0 picks a free one)") from None
    previous = {sig: signal.signal(sig, lambda *_: server.request_stop())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"bpfdepot ui: serving {server.url}/ (store {db}, agent {live.path})", flush=True)
    if not db.is_file():
        _err(f"bpfdepot ui: no time-series store at {db} yet; the pages say how to fill it")
    try:
        server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        _err("bpfdepot ui: stopped")
    return 0


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def register_commands(sub: argparse._SubParsersAction) -> None:
    """The ``ui`` command."""
    ui = sub.add_parser("ui", help="serve this node's web view (service map, latency, drops, "
                                   "flame graphs, instances) on 127.0.0.1")
    ui.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                    help=f"where to serve (default {DEFAULT_LISTEN}; port 0 picks a free one)")
    ui.add_argument("--allow-remote", action="store_true",
                    help="allow a --listen address other than loopback (the pages show every "
                         "process's connections and stacks: only on a trusted network)")
    ui.add_argument("--db", metavar="PATH", help="the time-series store (default: the storage "
                    "config's tsdb path, $BPFDEPOT_HOME/tsdb/events.sqlite)")
    ui.add_argument("--config", metavar="FILE", help="storage settings, as for run (for the store's path)")
    ui.add_argument("--cache", metavar="PATH", help="the UI's rollup cache (default <store>.ui-cache, "
                    "or under /var/tmp/bpfdepot-ui when the store's folder is not writable)")
    ui.add_argument("--agent-socket", metavar="PATH", help="the agent's control socket (default "
                    "$BPFDEPOT_AGENT_SOCKET or /run/bpfdepot/agent.sock)")
    ui.set_defaults(func=cmd_ui)
