"""Record the bytes a real grpcio client and server exchange, for tests/unit/test_l7_http2.py.

    python3 tests/unit/l7_grpc_record.py > tests/unit/l7_grpc_exchange.json

A loopback proxy between a grpcio client and server (plaintext, generic handler, raw bytes)
keeps every chunk each side wrote, in order: two calls of /shop.Cart/Add on one channel, the
second aborted with NOT_FOUND. The unit test replays the chunks without any network.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from concurrent import futures


def _pump(src: socket.socket, dst: socket.socket, side: str, log: list, lock: threading.Lock) -> None:
    while chunk := src.recv(65536):
        with lock:
            log.append((side, chunk.hex()))
        dst.sendall(chunk)
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:  # the other side closed first
        pass


def record() -> dict:
    """Run the exchange through the proxy; returns {"grpcio": version, "chunks": [[side, hex]]}."""
    import grpc

    def add(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"cart=9":
            context.abort(grpc.StatusCode.NOT_FOUND, "cart 9 not found")
        return b"added:" + request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "shop.Cart", {"Add": grpc.unary_unary_rpc_method_handler(add)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    log: list = []
    lock = threading.Lock()
    lsn = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        down, _ = lsn.accept()
        up = socket.create_connection(("127.0.0.1", port))
        threading.Thread(target=_pump, args=(down, up, "client", log, lock), daemon=True).start()
        threading.Thread(target=_pump, args=(up, down, "server", log, lock), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    with grpc.insecure_channel(f"127.0.0.1:{lsn.getsockname()[1]}") as channel:
        call = channel.unary_unary("/shop.Cart/Add")
        assert call(b"cart=1", timeout=10) == b"added:cart=1"
        try:
            call(b"cart=9", timeout=10)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
    server.stop(None).wait()
    with lock:
        return {"grpcio": grpc.__version__, "chunks": list(log)}


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=0)
    sys.stdout.write("\n")
