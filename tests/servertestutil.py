"""Test helpers for whole servers: free ports, HTTPS requests trusting a given CA."""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody
from twisted.web.http_headers import Headers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def https_get_json(
    url: str, *, trust_pem: bytes, headers: dict[str, list[str]] | None = None
) -> tuple[int, Any]:
    """GET ``url`` over TLS, trusting only ``trust_pem``; returns (status, JSON)."""
    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(trust_pem))
    agent = Agent(reactor, contextFactory=policy)
    resp = await agent.request(b"GET", url.encode(), Headers(headers or {}))
    body = await readBody(resp)
    return resp.code, json.loads(body) if body else None


async def http_get_json(url: str) -> tuple[int, Any]:
    """GET ``url`` over plain HTTP; returns (status, JSON)."""
    resp = await Agent(reactor).request(b"GET", url.encode())
    body = await readBody(resp)
    return resp.code, json.loads(body) if body else None
