"""A processor host: one process that runs one user_so library for the loader.

    python -m loader.processors.host '{"label": ..., "so_path": ..., ...}'   (loader.libbpf.encode.HostArgs)

The loop itself is C (``bpfdepot_host_run`` in loader/native/bpfdepot_route.c); this module only
makes the process a well-behaved child: Ctrl-C is the loader's to handle, the host dies with
its loader, so no processor outlives the programs that feed it, and the library runs as an
unprivileged user in a PID and mount view of its own (loader/processors/confine.py).
"""

from __future__ import annotations

import ctypes
import json
import signal
import sys

PR_SET_PDEATHSIG = 1
CONFINE_FAILED = 70  # loader/processors/workers.py HOST_EXIT names it


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    from loader.libbpf.encode import HostArgs, host_run

    config = json.loads(argv[1])
    config["routes"] = tuple(tuple(route) for route in config["routes"])
    run_as = config.pop("run_as", None)
    if run_as is not None:  # the library runs unprivileged (loader/processors/confine.py)
        from loader.processors.confine import RunAs, confine, own_pid_namespace

        try:
            config = confine(config, RunAs(**run_as), pid_namespace=own_pid_namespace())
        except OSError as exc:
            print(f"{config['label']}: cannot drop to user {run_as['name']}: {exc}",
                  file=sys.stderr, flush=True)
            return CONFINE_FAILED
    return host_run(HostArgs(**config))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
