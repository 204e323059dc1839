"""Listening sockets are created (and kept) by the activation service and inherited by
the listener, so restarting the listener loses no connection waiting in the backlog."""

from __future__ import annotations

import socket

BACKLOG = 4096


class BindError(OSError):
    pass


def open_listening_socket(ip: str, port: int) -> socket.socket:
    host = "0.0.0.0" if ip == "*" else ip
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise BindError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
