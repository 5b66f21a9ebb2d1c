"""The server name a TLS client asked for, read from its ClientHello as it
arrived, before the server's TLS library sees it: OpenSSL's SNI callback
reports a resumed TLS 1.2 session's own name instead of the one just sent,
so a test destination that relies on it can be fooled by session resumption.
"""

from __future__ import annotations

import socket
import time

__all__ = ["peek_client_hello", "server_name"]

_HANDSHAKE, _CLIENT_HELLO, _SERVER_NAME, _HOST_NAME = 22, 1, 0, 0
_RECORD_HEADER = 5
_WAIT_SECONDS = 10.0


def _peek(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes, left unread, once that many have arrived, the
    peer closed, or the socket's timeout passed (a record may come in pieces)."""
    deadline = time.monotonic() + (sock.gettimeout() or _WAIT_SECONDS)
    while True:
        data = socket.socket.recv(sock, size, socket.MSG_PEEK)
        if len(data) >= size or not data or time.monotonic() > deadline:
            return data
        time.sleep(0.005)


def peek_client_hello(sock: socket.socket) -> bytes:
    """The first TLS record, left unread for the handshake that follows (b''
    when the peer sent nothing before closing). ``sock`` may be an SSLSocket
    yet to handshake: this reads under it."""
    header = _peek(sock, _RECORD_HEADER)
    if len(header) < _RECORD_HEADER:
        return b""
    return _peek(sock, _RECORD_HEADER + int.from_bytes(header[3:5], "big"))


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def server_name(record: bytes) -> str | None:
    """The host name in a ClientHello record's server_name extension; None
    when it has none. ValueError for anything but a whole ClientHello."""
    if len(record) < 9 or record[0] != _HANDSHAKE or record[5] != _CLIENT_HELLO:
        raise ValueError(f"not a TLS ClientHello: {record[:9]!r}")
    hello = record[9:]
    at = 2 + 32  # client_version, random
    at += 1 + hello[at]  # session_id
    at += 2 + _u16(hello, at)  # cipher_suites
    at += 1 + hello[at]  # compression_methods
    end = at + 2 + _u16(hello, at)
    if end > len(hello):
        raise ValueError("a ClientHello cut short")
    at += 2
    while at + 4 <= end:
        kind, size = _u16(hello, at), _u16(hello, at + 2)
        at += 4
        if kind == _SERVER_NAME:  # server_name_list length, then name_type and host_name
            if hello[at + 2] != _HOST_NAME:
                return None
            return hello[at + 5 : at + 5 + _u16(hello, at + 3)].decode("ascii")
        at += size
    return None
