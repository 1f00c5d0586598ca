"""A TCP proxy in front of Redis that loses replies or refuses traffic on command.

Killing a connection *after* Redis ran a write but *before* its reply arrives is the case that
makes naive retries duplicate entries; this proxy makes that case deterministic.
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from gateway.cli.redis_server import free_port


class ChaosProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._lose_replies = 0
        self.lost_replies = 0
        self._conns: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def lose_next_replies(self, n: int = 1) -> None:
        """The replies to the next ``n`` requests that carry a write (EVALSHA) are swallowed and
        their connection cut: the write happened, the writer cannot know."""
        with self._lock:
            self._lose_replies += n

    @property
    def pending_losses(self) -> int:
        with self._lock:
            return self._lose_replies

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            doomed = threading.Event()  # this connection's next reply is to be lost
            threading.Thread(target=self._requests, args=(client, upstream, doomed), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, doomed), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, doomed: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if b"EVALSHA" in data and self._take_loss():
                    doomed.set()
                dst.sendall(data)
        except OSError:
            pass
        self._close_pair(src, dst)

    def _replies(self, src: socket.socket, dst: socket.socket, doomed: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if doomed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._close_pair(src, dst)

    @staticmethod
    def _close_pair(*socks: socket.socket) -> None:
        for s in socks:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _take_loss(self) -> bool:
        with self._lock:
            if self._lose_replies:
                self._lose_replies -= 1
                self.lost_replies += 1
                return True
            return False

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for s in self._conns:
                s.close()
