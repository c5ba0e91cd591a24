"""A processor host: one process that runs one user_so library for the loader.

    python -m loader.processors.host '{"label": ..., "so_path": ..., ...}'   (loader.libbpf.encode.HostArgs)

The loop itself is C (``bpfdepot_host_run`` in loader/native/bpfdepot_route.c); this module only
makes the process a well-behaved child: Ctrl-C is the loader's to handle, and the host dies
with its loader, so no processor outlives the programs that feed it.
"""

from __future__ import annotations

import ctypes
import json
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    from loader.libbpf.encode import HostArgs, host_run

    config = json.loads(argv[1])
    config["routes"] = tuple(tuple(route) for route in config["routes"])
    return host_run(HostArgs(**config))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
