"""The reverse proxy's pure parts: the upstream request head (hop-by-hop headers, the
X-Forwarded-* set, an upgrade's Connection/Upgrade kept) and a rule's timeout."""

from __future__ import annotations

from poolhouse.worker.handlers.proxy import DEFAULT_TIMEOUT, build_request, response_headers, timeout_from

HEADERS = (b"host", b"example.org", b"connection", b"Upgrade, X-Secret", b"upgrade", b"websocket",
           b"x-secret", b"hop", b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==",
           b"sec-websocket-version", b"13", b"x-forwarded-for", b"10.0.0.9", b"keep-alive", b"timeout=5")


def lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")


def test_plain_request_drops_hop_by_hop_headers() -> None:
    head, chunked = build_request(HEADERS, "GET", "/chat", "127.0.0.1:9000", "127.0.0.1", "https", 0, None)
    got = lines(head)
    assert got[0] == b"GET /chat HTTP/1.1" and got[1] == b"Host: 127.0.0.1:9000"
    lowered = head.lower()
    assert b"upgrade" not in lowered and b"connection:" not in lowered and b"x-secret" not in lowered
    assert b"keep-alive" not in lowered
    assert b"X-Forwarded-For: 10.0.0.9, 127.0.0.1" in got
    assert b"X-Forwarded-Proto: https" in got and b"X-Forwarded-Host: example.org" in got
    assert b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==" in got  # end-to-end headers pass
    assert head.endswith(b"\r\n\r\n") and not chunked


def test_upgrade_keeps_connection_and_upgrade() -> None:
    head, chunked = build_request(HEADERS, "GET", "/chat", "127.0.0.1:9000", "127.0.0.1", "http", 0, None,
                                  b"websocket")
    got = lines(head)
    assert b"Connection: Upgrade" in got and b"Upgrade: websocket" in got
    assert sum(1 for line in got if line.lower().startswith(b"upgrade:")) == 1
    assert sum(1 for line in got if line.lower().startswith(b"connection:")) == 1
    assert b"x-secret" not in head.lower()  # still named by the client's Connection: hop-by-hop
    assert b"X-Forwarded-For: 10.0.0.9, 127.0.0.1" in got
    assert not any(line.lower().startswith((b"content-length", b"transfer-encoding")) for line in got)
    assert not chunked


def test_switching_protocols_headers_lose_hop_by_hop() -> None:
    upstream = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), (b"Sec-WebSocket-Protocol", b"chat")]
    assert response_headers(upstream, b"", b"") == upstream[2:]


def test_rule_timeout() -> None:
    assert timeout_from({}, DEFAULT_TIMEOUT) == DEFAULT_TIMEOUT
    assert timeout_from({"POOLHOUSE_PROXY_TIMEOUT": "5"}, 120) == 5
    assert timeout_from({"poolhouse_proxy_timeout": " 2.5 "}, 120) == 2.5  # names as IIS compares them
    assert timeout_from({"POOLHOUSE_PROXY_TIMEOUT": "00:05:00"}, 120) == 300
    assert timeout_from({"POOLHOUSE_PROXY_TIMEOUT": "01:00:30"}, 120) == 3630
    for bad in ("soon", "", "0", "-3", "1:x"):
        assert timeout_from({"POOLHOUSE_PROXY_TIMEOUT": bad}, 120) == 120
    assert timeout_from({"HTTP_X_OTHER": "5"}, 120) == 120
