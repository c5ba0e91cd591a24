"""bpftrace programs: load → first event through ``bpfdepot run`` (which supervises bpftrace on
the checked script) against bpftrace run by hand on the same script, interleaved in one run.

A caller named ``bt_getppid`` calls getppid() every 2 ms for the whole benchmark; each case
starts its process and stops the clock when the first event is on disk (bpfdepot: the output
file; by hand: bpftrace's stdout). The script was checked into the store before timing, so
bpfdepot's time is its own start-up plus bpftrace's. The agent row sends a load request to a
running ``bpfdepot agent`` instead, which pays no Python start-up or imports.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import ROOT, Row, median, paired

sys.path.insert(0, str(ROOT))

BUNDLE = ROOT / "bpf" / "getppid_bt"
CALLER = ("import ctypes, os, time\nctypes.CDLL(None).prctl(15, b'bt_getppid', 0, 0, 0)\n"
          "while True:\n    os.getppid()\n    time.sleep(0.002)\n")


def first_event_bpfdepot(home: Path, out: Path) -> float:
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    p = subprocess.Popen([*harness.bpfdepot_exe(), "run", str(BUNDLE), "--output", str(out)],
                         cwd=ROOT, env=harness.env_for(home), stderr=subprocess.DEVNULL)
    try:
        while not (out.exists() and b"\n" in out.read_bytes()):
            if p.poll() is not None:
                raise RuntimeError("bpfdepot run exited before its first event")
            time.sleep(0.001)
        return time.perf_counter() - started
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)


def first_event_by_hand() -> float:
    started = time.perf_counter()
    p = subprocess.Popen(["bpftrace", "-B", "none", "-f", "json", str(BUNDLE / "getppid.bt")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in p.stdout:
            if '"printf"' in line:
                return time.perf_counter() - started
        raise RuntimeError("bpftrace exited before its first event")
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)


def first_event_agent(sock: Path, state: Path, i: int) -> float:
    """A load request to a running agent until the instance's first record is on disk."""
    from loader.agent.protocol import call

    out = state / "instances" / f"bt{i}" / "events.jsonl"
    started = time.perf_counter()
    answer = call(sock, {"op": "load", "target": str(BUNDLE), "name": f"bt{i}"})
    if not answer.get("ok"):
        raise RuntimeError(f"the agent refused: {answer}")
    try:
        while not (out.exists() and b"\n" in out.read_bytes()):
            time.sleep(0.001)
        return time.perf_counter() - started
    finally:
        call(sock, {"op": "unload", "name": f"bt{i}"})


def interpreter_and_imports() -> float:
    """What every ``bpfdepot`` command pays before it does anything: Python and its imports."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import builder.cli, loader.node, builder.flamecli"],
                   cwd=ROOT, check=True)
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> list[Row]:
    with harness.scratch("bpftrace") as tmp:
        home = tmp / "home"
        harness.run([*harness.bpfdepot_exe(), "build", str(BUNDLE)], cwd=ROOT,
                    env=harness.env_for(home))
        caller = subprocess.Popen([sys.executable, "-c", CALLER])
        sock, state = tmp / "agent.sock", tmp / "state"
        agent = subprocess.Popen([*harness.bpfdepot_exe(), "agent", "--socket", str(sock),
                                  "--state", str(state), "--pins", f"{harness.BPFFS}/bt-bench"],
                                 cwd=ROOT, env=harness.env_for(home), stderr=subprocess.PIPE,
                                 text=True)
        try:
            harness.wait_for_line(agent, agent.stderr, "listening", "bpfdepot agent")
            subprocess.Popen(["cat"], stdin=agent.stderr, stdout=subprocess.DEVNULL)
            ours, hand, imports, agent_times = [], [], [], []
            for i in range(args.reps):
                ours.append(first_event_bpfdepot(home, tmp / "out.json"))
                hand.append(first_event_by_hand())
                imports.append(interpreter_and_imports())
                agent_times.append(first_event_agent(sock, state, i))
        finally:
            caller.kill()
            caller.wait()
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
    ratio = paired(ours, hand)
    after = [o - i for o, i in zip(ours, imports)]
    return [Row(metric="load → first event (getppid.bt)", value=harness.ms(median(ours)),
                baseline=harness.ms(median(hand)) + " (bpftrace by hand)", ratio=ratio,
                goal="≤ 1.5×", met=ratio <= 1.5),
            Row(metric="  of which Python start + imports", value=harness.ms(median(imports))),
            Row(metric="  the rest (resolve, spawn, attach, first record)",
                value=harness.ms(median(after)), baseline=harness.ms(median(hand)),
                ratio=paired(after, hand), goal="≤ 1.5×", met=paired(after, hand) <= 1.5),
            Row(metric="load → first event through the agent (no Python start)",
                value=harness.ms(median(agent_times)), baseline=harness.ms(median(hand)),
                ratio=paired(agent_times, hand), goal="≤ 1.5×",
                met=paired(agent_times, hand) <= 1.5)]


if __name__ == "__main__":
    sys.exit(harness.main("bench_bpftrace", measure, reps=7))
