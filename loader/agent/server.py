"""``bpfdepot agent``: the node daemon. One process, its instances (loader/agent/instances.py),
a Unix socket for ``bpfdepot load/unload/replace/ps/logs`` and a watched manifests folder.

    socket    one thread per connection, one request line → one answer line
              (loader/agent/protocol.py); the socket is 0600 in a 0700 folder
    folder    ``manifests.d/``: each ``NAME.yaml`` (or ``NAME/manifest.yaml`` bundle) is the
              instance NAME; added → load, removed → unload, changed → replace. Looked at every
              0.25 s (a stat per entry): a change is live well within a second. A manifest that
              fails is not retried until it changes again; its error is in ``ps`` and ``logs``
    stop      SIGTERM or SIGINT: every instance unloaded (detached, drained), the socket removed
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loader.agent.instances import AgentConflict, Instances
from loader.agent.protocol import ProtocolError, decode, encode, failure, read_line
from loader.errors import ManifestError

FOLDER_POLL_S = 0.25
MAX_BUNDLE_FILES = 256  # a watched bundle folder's files compared for changes

Say = Callable[[str], None]


class AgentServer:
    """The daemon's control plane around ``instances``; ``serve`` blocks until stopped."""

    def __init__(self, instances: Instances, socket_path: Path, *,
                 manifests: Path | None, name_of: Callable[[str], str], say: Say) -> None:
        self.instances = instances
        self.socket_path = socket_path
        self.manifests = manifests
        self.name_of = name_of  # a target's default instance name (its manifest's name)
        self.say = say
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._seen: dict[str, tuple] = {}  # folder entry → (signature, loaded?)
        self._failed: dict[str, dict[str, Any]] = {}  # folder entries that did not load, for ps

    # -- control socket ---------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        folder = self.socket_path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                self.socket_path.unlink()  # left by an agent that died: ours now
            else:
                probe.close()
                raise AgentConflict(f"another agent already listens on {self.socket_path}",
                                    hint="stop it first, or give this one --socket PATH")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(self.socket_path))
        finally:
            os.umask(old)
        listener.listen(64)
        listener.settimeout(0.5)
        return listener

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed at stop
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True,
                             name="agent connection").start()

    def _serve_connection(self, conn: socket.socket) -> None:
        buffer = bytearray()
        with conn:
            while True:
                try:
                    line = read_line(conn, buffer)
                except (ProtocolError, OSError) as exc:
                    self._answer(conn, {"ok": False, "error": f"bad request: {exc}",
                                        "exit_code": 2})
                    return
                if line is None:
                    return
                try:
                    answer = self.handle(decode(line))
                except ProtocolError as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}", "exit_code": 2}
                if not self._answer(conn, answer):
                    return

    @staticmethod
    def _answer(conn: socket.socket, answer: dict[str, Any]) -> bool:
        try:
            conn.sendall(encode(answer))
            return True
        except (OSError, ProtocolError):
            return False

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request → its answer; errors become ``{"ok": false, ...}``, never a crash."""
        op = request.get("op")
        try:
            if op == "ping":
                return {"ok": True, "pid": os.getpid(), "instances": len(self.instances.names())}
            if op == "ps":
                rows = self.instances.ps()
                have = {r["name"] for r in rows}
                rows += [r for n, r in sorted(self._failed.items()) if n not in have]
                if request.get("detail"):  # the web view: each run's processor routes and sinks
                    from loader.ui.live import detail

                    rows = [detail(r, self._instance(r["name"])) for r in rows]
                return {"ok": True, "instances": rows}
            if op == "logs":
                instance = self.instances.get(_text(request, "name"))
                lines = list(instance.log)
                count = request.get("lines")
                if isinstance(count, int) and count > 0:
                    lines = lines[-count:]
                return {"ok": True, "name": instance.name, "lines": lines}
            if op == "load":
                target = _text(request, "target")
                name = request.get("name") or self.name_of(target)
                began = time.perf_counter()
                instance = self.instances.load(_plain(name), target, _knobs(request))
                return {"ok": True, "name": instance.name, **_loaded(instance, began)}
            if op == "replace":
                name, target = _text(request, "name"), _text(request, "target")
                began = time.perf_counter()
                instance, stopped_ms = self.instances.replace(name, target, _knobs(request))
                return {"ok": True, "name": name, **_loaded(instance, began),
                        "old_stopped_ms": round(stopped_ms, 1)}
            if op == "unload":
                name = _text(request, "name")
                instance = self.instances.get(name)
                ms = self.instances.unload(name)
                self.say(f"bpfdepot agent: unloaded {name} in {ms:.1f} ms")
                report = instance.report  # the run's final counts, read after detach
                channels = [{"program": c.program, "channel": c.channel, "received": c.received,
                             "lost": c.lost} for c in (report.channels if report else [])]
                return {"ok": True, "name": name, "ms": round(ms, 1), "channels": channels}
            raise ManifestError(f"unknown request op {op!r}",
                                hint="ping, load, unload, replace, ps or logs")
        except BaseException as exc:  # noqa: BLE001 — every failure is an answer
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return failure(exc)

    def _instance(self, name: str):
        """The running instance ``name``, or None (failed, or unloaded meanwhile)."""
        try:
            return self.instances.get(name)
        except AgentConflict:
            return None

    # -- the watched folder -----------------------------------------------------------------

    def _folder_loop(self) -> None:
        while not self._stop.wait(FOLDER_POLL_S):
            try:
                self.scan_folder()
            except OSError as exc:
                self.say(f"bpfdepot agent: cannot read {self.manifests}: {exc.strerror}")

    def scan_folder(self) -> None:
        """Bring the instances in line with the folder: one pass."""
        now = _entries(self.manifests)
        for name in [n for n in self._seen if n not in now]:
            _, loaded = self._seen.pop(name)
            self._failed.pop(name, None)
            if loaded:
                self._folder_op("unload", name, None)
        for name, (target, signature) in now.items():
            seen = self._seen.get(name)
            if seen is not None and seen[0] == signature:
                continue
            op = "replace" if seen is not None and seen[1] else "load"
            ok = self._folder_op(op, name, target)
            self._seen[name] = (signature, ok if op == "load" else (ok or seen[1]))

    def _folder_op(self, op: str, name: str, target: str | None) -> bool:
        request = {"op": op, "name": name, **({"target": target} if target else {})}
        answer = self.handle(request)
        where = target or f"{self.manifests}/{name}"
        if answer["ok"]:
            self._failed.pop(name, None)
            self.say(f"bpfdepot agent: {where}: {op}ed")
        else:
            self.say(f"bpfdepot agent: {where}: {op} failed: {answer['error']}"
                     + (f" (hint: {answer['hint']})" if answer.get("hint") else ""))
            if op != "unload":
                self._failed[name] = {"name": name, "target": where, "state": "failed",
                                      "since": time.time(), "error": answer["error"]}
        return bool(answer["ok"])

    # -- life -------------------------------------------------------------------------------

    def serve(self) -> None:
        """Listen, watch, and block until SIGTERM/SIGINT (or ``stop``); then unload all."""
        self._listener = self._listen()
        threads = [threading.Thread(target=self._accept_loop, daemon=True, name="agent socket")]
        if self.manifests is not None:
            self.manifests.mkdir(parents=True, exist_ok=True)
            self.scan_folder()
            threads.append(threading.Thread(target=self._folder_loop, daemon=True,
                                            name="agent folder"))
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, lambda *_: self._stop.set())
                        for sig in (signal.SIGTERM, signal.SIGINT)}
        for thread in threads:
            thread.start()
        self.say(f"bpfdepot agent: listening on {self.socket_path}"
                 + (f", watching {self.manifests}" if self.manifests else "") + f" (pid {os.getpid()})")
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._listener.close()
            self.socket_path.unlink(missing_ok=True)
            for thread in threads:
                thread.join(2.0)
            names = self.instances.names()
            self.instances.close_all()
            self.say(f"bpfdepot agent: stopped; unloaded {len(names)} instance(s)")

    def stop(self) -> None:
        self._stop.set()


def _loaded(instance, began: float) -> dict[str, Any]:
    live = instance.live
    return {"ms": round((time.perf_counter() - began) * 1000, 1),
            "programs": live.programs if live else 0,
            "attach_ms": round(live.attach_ms, 1) if live else None}


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"request {request.get('op')!r} needs {key!r} (a non-empty string)")
    return value


def _knobs(request: dict[str, Any]) -> dict[str, str]:
    """``set``: knob name → value text, read by the knob's own type at load (as --set)."""
    knobs = request.get("set") or {}
    if not isinstance(knobs, dict) or not all(isinstance(k, str) and isinstance(v, (str, int))
                                              for k, v in knobs.items()):
        raise ManifestError("request 'set' must map knob names to values",
                            hint='e.g. {"set": {"targ_tgid": "1234"}}')
    return {k: str(v) for k, v in knobs.items()}


def _plain(name: object) -> str:
    if not isinstance(name, str):
        raise ManifestError(f"instance name {name!r} is not a string")
    return name


def _entries(folder: Path) -> dict[str, tuple[str, tuple]]:
    """name → (target, signature) for each manifest in ``folder``: ``NAME.yaml``/``.yml`` files
    and ``NAME/manifest.yaml`` bundles; hidden and editor temp files are skipped. The signature
    changes when any file of the entry changes (size or mtime)."""
    out = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name, ext = os.path.splitext(entry.name)
        if entry.name.startswith(".") or entry.name.endswith("~"):
            continue
        if entry.is_file(follow_symlinks=False) and ext in (".yaml", ".yml"):
            st = entry.stat(follow_symlinks=False)
            out[name] = (entry.path, (st.st_size, st.st_mtime_ns))
        elif entry.is_dir(follow_symlinks=False) and os.path.isfile(
                os.path.join(entry.path, "manifest.yaml")):
            out[entry.name] = (entry.path, _tree_signature(Path(entry.path)))
    return out


def _tree_signature(root: Path) -> tuple:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if len(files) >= MAX_BUNDLE_FILES:
                return tuple(files)
            try:
                st = os.lstat(os.path.join(dirpath, fname))
            except OSError:
                continue
            files.append((os.path.relpath(os.path.join(dirpath, fname), root), st.st_size,
                          st.st_mtime_ns))
    return tuple(files)


