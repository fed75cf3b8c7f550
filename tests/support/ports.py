"""Ports a test server can stop and start again on.

A port from ``bind(0)`` lies in the kernel's ephemeral range, the range it also gives outgoing
connections as their source ports. While a test's simulator is down, the wrapper keeps
connecting to its port, and any of those connections (or another client's) may be given that
very port as its own source port; a connect to a closed loopback port can even connect to
itself. The simulator then cannot bind it again ("address already in use"). Ports below the
ephemeral range are never handed out that way, so a restart on them cannot collide.
"""

from __future__ import annotations

import errno
import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL_LOW = 32768  # Linux's default low end
_SPAN = 12_000  # how far below the ephemeral range to look
_ATTEMPTS = 200  # bounded: a free port is found in a few tries on a test machine


def ephemeral_low() -> int:
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def restartable_port(rng: random.Random | None = None) -> int:
    """A 127.0.0.1 port that is free now and below the ephemeral range (see the module's docstring)."""
    rng = rng or random.Random()
    high = ephemeral_low() - 1
    low = max(1024, high - _SPAN)
    for _ in range(_ATTEMPTS):
        port = rng.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            return port
    raise RuntimeError(f"no free port in {low}-{high} after {_ATTEMPTS} tries")
