"""Upstream sockets find dead connections by TCP keepalive, not by dropping quiet watches."""

from __future__ import annotations

import socket

import pytest

from apisim.server import Simulator
from cache.apiclient import KEEPALIVE, ApiClient, Identity
from kubeapi.resources import NODES


@pytest.mark.parametrize("identity", [Identity.WRAPPER, Identity.FORWARDED])
async def test_every_upstream_connection_has_tcp_keepalive_of_about_a_minute(sim: Simulator,
                                                                            identity: Identity) -> None:
    async with ApiClient(sim.url) as client, client.stream(
            "GET", NODES.collection_path(), params={"watch": "1", "timeoutSeconds": "1"}, identity=identity) as resp:
        assert resp.connection is not None and resp.connection.transport is not None
        sock = resp.connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE.idle == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE.interval == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE.count == 3
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000
