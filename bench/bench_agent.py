"""The node agent: a load through its socket against C libbpf loading the same object, unload
time, and the agent's idle CPU with 20 instances loaded.

load: ``{"op": "load"}`` sent straight to the socket (no CLI process) for tcp_connlat with its
artifact already in the store, wall time from sending the request to the answer (the instance is
attached when it answers), against ``flood/consumer.c -a`` (exec, libbpf open + load + attach,
"ready"): the issue's goal is ≤ 1.5×. unload: request → answer (detached, drained), beside
the C consumer's time from "ready" to its exit (bpf_link__destroy of each link, close, exit):
closing a tracepoint's perf event waits for RCU grace periods in the kernel (runqlat, on BTF
tracepoints, shows the same unload without that wait). idle: the
agent's CPU time over 10 s with 20 instances of a plain getppid program loaded and nothing
happening, as a share of one CPU (goal < 1%).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import ROOT, Row, median, ms, paired

sys.path.insert(0, str(ROOT))
from loader.agent.protocol import call  # noqa: E402

BUNDLE = ROOT / "bpf" / "tcp_connlat"
IDLE = ROOT / "tests" / "kernel" / "bundles" / "agent_calls"
RAW = ROOT / "bpf" / "runqlat"
INSTANCES = 20
IDLE_S = 10.0


def start_agent(home: Path, tmp: Path) -> tuple[subprocess.Popen, Path]:
    sock = tmp / "agent.sock"
    p = subprocess.Popen([*harness.bpfdepot_exe(), "agent", "--socket", str(sock), "--state",
                          str(tmp / "state")], env=harness.env_for(home),
                         stderr=subprocess.PIPE, text=True)
    harness.wait_for_line(p, p.stderr, "listening", "bpfdepot agent")
    subprocess.Popen(["cat"], stdin=p.stderr, stdout=subprocess.DEVNULL)  # keep it drained
    return p, sock


def request(sock: Path, **req: object) -> tuple[float, dict]:
    t0 = time.perf_counter()
    answer = call(sock, req)
    took = time.perf_counter() - t0
    if not answer.get("ok"):
        raise SystemExit(f"bench: the agent refused {req}: {answer}")
    return took, answer


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(args: argparse.Namespace) -> list[Row]:
    with harness.scratch("agent") as tmp:
        home = tmp / "home"
        blob = harness.build_blob(BUNDLE, home)
        harness.build_blob(IDLE, home)
        consumer = harness.gcc(harness.BENCH / "flood" / "consumer.c", tmp / "consumer", "-lbpf")
        agent, sock = start_agent(home, tmp)
        try:
            request(sock, op="load", target=str(BUNDLE), name="warm")  # features probed, BTF read
            request(sock, op="unload", name="warm")
            loads, unloads, own, c, c_detach = [], [], [], [], []
            for i in range(args.reps):
                took, answer = request(sock, op="load", target=str(BUNDLE), name=f"c{i}")
                loads.append(took), own.append(answer["attach_ms"] / 1000)
                unloads.append(request(sock, op="unload", name=f"c{i}")[0])
                t0 = time.perf_counter()
                p = subprocess.Popen([str(consumer), "-a", str(blob)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
                harness.wait_for_line(p, p.stdout, "ready", "consumer -a")
                ready = time.perf_counter()
                c.append(ready - t0)
                p.communicate(timeout=30)  # after "ready" it destroys its links, closes, exits
                c_detach.append(time.perf_counter() - ready)
            raw = []  # the same for a program on BTF tracepoints (no perf event to tear down)
            harness.build_blob(RAW, home)
            for i in range(args.reps):
                request(sock, op="load", target=str(RAW), name=f"r{i}")
                raw.append(request(sock, op="unload", name=f"r{i}")[0])
            for i in range(INSTANCES):
                request(sock, op="load", target=str(IDLE), name=f"idle{i}",
                        set={"target_tgid": "1"})
            time.sleep(1.0)
            before = cpu_seconds(agent.pid)
            time.sleep(IDLE_S)
            idle = (cpu_seconds(agent.pid) - before) / IDLE_S
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=120)
    return [
        Row(metric="agent load tcp_connlat: request → attached", value=ms(median(loads)),
            baseline=f"{ms(median(c))} (C libbpf open+load+attach, incl. exec)",
            ratio=paired(loads, c), goal="≤ 1.5×", met=paired(loads, c) <= 1.5),
        Row(metric="  of which the run's own (manifest → attached)", value=ms(median(own)),
            baseline=f"{ms(median(c))} (C)", ratio=paired(own, c)),
        Row(metric="agent unload tcp_connlat: request → detached, drained",
            value=ms(median(unloads)),
            baseline=f"{ms(median(c_detach))} (C: links destroyed, object closed, exit)",
            ratio=paired(unloads, c_detach), goal="≤ 50 ms", met=median(unloads) <= 0.050),
        Row(metric="agent unload runqlat (3 tp_btf links): request → detached",
            value=ms(median(raw)), goal="≤ 50 ms", met=median(raw) <= 0.050),
        Row(metric=f"agent idle CPU, {INSTANCES} instances loaded",
            value=f"{idle * 100:.2f}% of one CPU", goal="< 1%", met=idle < 0.01),
    ]


if __name__ == "__main__":
    sys.exit(harness.main("bench_agent", measure, reps=7))
