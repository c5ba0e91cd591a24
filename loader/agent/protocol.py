"""The agent's control protocol: one JSON object per line over a Unix stream socket.

A request is ``{"op": "load", ...}``; the answer is ``{"ok": true, ...}`` or ``{"ok": false,
"error": "...", "hint": "...", "exit_code": N}`` (the exit code the same mistake gets from
``bpfdepot run``). Lines are bounded both ways, so a client cannot make the agent buffer without
end. The socket is created mode 0600 in a 0700 folder: only root talks to the agent, which loads
kernel programs for whoever does.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from loader.errors import BpfDepotError

DEFAULT_SOCKET = Path("/run/bpfdepot/agent.sock")
MAX_LINE = 1 << 20  # an answer with a few hundred instances' counts fits well inside
OPS = ("ping", "load", "unload", "replace", "ps", "logs", "stop")


class AgentError(BpfDepotError):
    """The agent cannot be reached, or answered something that is not the protocol."""

    exit_code = 3


class ProtocolError(ValueError):
    """A request line that is not one bounded JSON object with a known ``op``."""


def socket_path(explicit: str | None = None) -> Path:
    """``--socket``, else ``$BPFDEPOT_AGENT_SOCKET``, else /run/bpfdepot/agent.sock."""
    return Path(explicit or os.environ.get("BPFDEPOT_AGENT_SOCKET") or DEFAULT_SOCKET)


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"
    if len(data) > MAX_LINE:
        raise ProtocolError(f"message of {len(data)} bytes is over the {MAX_LINE} byte limit")
    return data


def decode(line: bytes) -> dict[str, Any]:
    """One request or answer line; ProtocolError for anything else."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"not a JSON object but {type(message).__name__}")
    return message


def read_line(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """The next line from ``sock`` (without its newline), None at end of stream; a line over
    MAX_LINE is a ProtocolError. ``buffer`` keeps what was read past the line."""
    while True:
        end = buffer.find(b"\n")
        if end >= 0:
            line = bytes(buffer[:end])
            del buffer[:end + 1]
            return line
        if len(buffer) > MAX_LINE:
            raise ProtocolError(f"line over the {MAX_LINE} byte limit")
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk


def failure(exc: BaseException) -> dict[str, Any]:
    """The answer for an error: the message, hint and exit code of a BpfDepotError."""
    if isinstance(exc, BpfDepotError):
        answer = {"ok": False, "error": exc.message, "exit_code": exc.exit_code}
        if exc.hint:
            answer["hint"] = exc.hint
        if exc.detail:
            answer["detail"] = exc.detail
        return answer
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "exit_code": 1}


def call(path: Path, request: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Send one request to the agent at ``path`` and return its answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentError(f"no bpfdepot agent listens on {path} ({exc.strerror})",
                             hint="start one: sudo bpfdepot agent (or systemctl start "
                                  "bpfdepot-agent), or point --socket at it") from None
        except PermissionError:
            raise AgentError(f"{path}: permission denied", hint="the agent's socket is root's: "
                             "run the command with sudo") from None
        sock.sendall(encode(request))
        line = read_line(sock, bytearray())
    except TimeoutError:
        raise AgentError(f"the agent on {path} did not answer within {timeout:.0f} s") from None
    except ProtocolError as exc:
        raise AgentError(f"the agent on {path} answered something unreadable: {exc}") from None
    finally:
        sock.close()
    if line is None:
        raise AgentError(f"the agent on {path} closed the connection without an answer",
                         hint="see the agent's log (journalctl -u bpfdepot-agent)")
    try:
        return decode(line)
    except ProtocolError as exc:
        raise AgentError(f"the agent on {path} answered something unreadable: {exc}") from None
