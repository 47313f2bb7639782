"""A TCP proxy on loopback that can blackhole, reset or slow the app's database traffic.

Runs inside the (gevent-patched) test process: one greenlet per direction per
connection. ``mode`` applies to traffic from now on: ``pass``; ``blackhole`` (accept,
forward nothing: reads hang until the driver's timeout); ``reset`` (abort every open
connection and refuse new ones with an RST); ``slow`` (delay each chunk by ``delay``).
:meth:`blackhole_open` silences only the connections open now (new ones pass), and
:meth:`retarget` sends new connections to another server (a failover's new address).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import struct
import time

import gevent
from gevent.server import StreamServer


class FaultProxy:
    def __init__(self, target_port: int, *, delay: float = 0.2) -> None:
        self.target = ("127.0.0.1", target_port)
        self.mode = "pass"
        self.delay = delay
        self._sockets: set[socket.socket] = set()
        self._silenced: set[socket.socket] = set()
        self.accepted: list[float] = []  # when (monotonic) each client connection came in
        self._server = StreamServer(("127.0.0.1", 0), self._handle, backlog=1024)
        self._server.start()
        self.port = self._server.server_port

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "blackhole", "reset", "slow"), mode
        self.mode = mode
        if mode == "pass":
            self._silenced.clear()
        if mode == "reset":
            for sock in list(self._sockets):
                self._abort(sock)

    def retarget(self, port: int) -> None:
        """New connections go to ``port`` from now on; open ones stay where they are."""
        self.target = ("127.0.0.1", port)

    def blackhole_open(self) -> None:
        """Forward nothing more on the connections open now (a silently dropped link);
        connections made after this call pass. ``set_mode("pass")`` lifts it."""
        self._silenced.update(self._sockets)

    def stop(self) -> None:
        self._server.stop(timeout=1)
        for sock in list(self._sockets):
            self._abort(sock)

    def _abort(self, sock: socket.socket) -> None:
        # SO_LINGER 0: close() sends an RST, as a crashed middlebox would.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()
        self._sockets.discard(sock)

    def _handle(self, client: socket.socket, address: object) -> None:
        self.accepted.append(time.monotonic())
        if self.mode == "reset":
            self._abort(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._abort(client)
            return
        upstream.settimeout(None)
        self._sockets.update((client, upstream))
        pumps = [gevent.spawn(self._pump, client, upstream), gevent.spawn(self._pump, upstream, client)]
        gevent.joinall(pumps)
        for sock in (client, upstream):
            self._sockets.discard(sock)
            self._silenced.discard(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while self.mode == "blackhole" or source in self._silenced:
                    gevent.sleep(0.05)  # hold everything: the peer sees silence
                if self.mode == "slow":
                    gevent.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


def main() -> None:
    """``python -m testbed.faultproxy --target A [--alternate B]``: a proxy in its own
    process (for the soak); prints its port, and each SIGUSR1 swaps the target with the
    alternate for new connections (a failover to B, and back)."""
    from gevent import monkey

    monkey.patch_all()
    parser = argparse.ArgumentParser(prog="python -m testbed.faultproxy")
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--alternate", type=int)
    args = parser.parse_args()
    proxy = FaultProxy(args.target)
    ports = [args.target, args.alternate or args.target]

    def swap() -> None:
        ports.reverse()
        proxy.retarget(ports[0])

    gevent.signal_handler(signal.SIGUSR1, swap)
    gevent.signal_handler(signal.SIGTERM, proxy.stop)
    print(proxy.port, flush=True)
    proxy._server.serve_forever()


if __name__ == "__main__":
    main()
