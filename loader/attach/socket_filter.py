"""``socket_filter``: run a ``SEC("socket")`` program on every packet of one network interface.

    attach:
      dns_packets: {socket_filter: {interface: lo}}

The loader opens an AF_PACKET raw socket, attaches the program with
``setsockopt(SO_ATTACH_BPF)`` and only then binds the socket to the interface for every
protocol (ETH_P_ALL), so no packet is queued unfiltered. The program sees each packet from the
Ethernet header on (on ``lo`` once going out and once coming in: ``skb->pkt_type`` tells them
apart) and sends what it wants through its maps (a ring buffer channel, as usual). What it
returns is how many bytes of the packet the socket keeps: the loader never reads the socket,
so a program should return 0 (nothing queued). The Link closes the socket, which detaches it.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from yaml.nodes import Node

from loader.attach import AttachKind, register
from loader.errors import LoadError
from loader.libbpf.attach import program_fd
from loader.libbpf.core import BpfObject
from loader.model.yamldoc import YamlDoc

ETH_P_ALL = 0x0003
SO_ATTACH_BPF = getattr(socket, "SO_ATTACH_BPF", 50)  # asm-generic/socket.h


def interfaces() -> list[str]:
    """The names of this host's network interfaces."""
    return sorted(name for _, name in socket.if_nameindex())


def parse(doc: YamlDoc, node: Node, at: str) -> Mapping[str, Any]:
    fields = doc.fields(node, at, required=("interface",))
    name = doc.string(fields["interface"], "interface", at)
    if not name or len(name) >= 16 or "/" in name or any(c.isspace() for c in name):
        raise doc.error(fields["interface"], f"{name!r} in {at} is not an interface name",
                        hint="name a network interface as `ip link` shows it, e.g. interface: lo")
    return {"interface": name}


class SocketLink:
    """A socket filter: the AF_PACKET socket carrying it (closing it detaches the program)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock

    def destroy(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def attach(obj: BpfObject, program: str, options: Mapping[str, Any]) -> list[SocketLink]:
    name = options["interface"]
    try:
        socket.if_nametoindex(name)
    except OSError:
        raise LoadError(f"no network interface '{name}' for socket filter '{program}' of "
                        f"'{obj.label}'", hint=f"interfaces here: {', '.join(interfaces())}") from None
    fd = program_fd(obj, program)
    # protocol 0: the socket receives nothing until bound, so nothing passes unfiltered
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, fd)
        except OSError as exc:
            raise LoadError(f"cannot attach program '{program}' of '{obj.label}' to a socket: "
                            f"{exc.strerror}",
                            hint="is it a SEC(\"socket\") program?") from None
        try:
            sock.bind((name, ETH_P_ALL))
        except OSError as exc:
            raise LoadError(f"cannot bind a packet socket to interface '{name}': {exc.strerror}",
                            hint=f"interfaces here: {', '.join(interfaces())}") from None
    except BaseException:
        sock.close()
        raise
    return [SocketLink(sock)]


register(AttachKind(key="socket_filter", summary="an AF_PACKET socket on one network interface",
                    sections=("socket",), parse=parse, attach=attach))
