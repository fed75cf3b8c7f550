"""The test servers' restart ports (tests/support/ports.py) are outside the kernel's ephemeral
range, so no outgoing connection made while a server is down can take its port."""

from __future__ import annotations

import random
import socket

from tests.support.ports import ephemeral_low, restartable_port


def test_a_restartable_port_is_free_and_below_the_ephemeral_range() -> None:
    rng = random.Random(7)
    for _ in range(20):
        port = restartable_port(rng)
        assert 1024 <= port < ephemeral_low()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free


def test_a_port_in_use_is_never_handed_out() -> None:
    taken = restartable_port(random.Random(3))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        # The same seed draws the taken port first: it is skipped, not returned.
        assert restartable_port(random.Random(3)) != taken
