"""A free block of ports for one `fleetvl up` run."""

from __future__ import annotations

import random
import socket


def free_base() -> int:
    """A base port whose first 20 ports (the fleet's listeners) are all free."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 30000, 500)
        try:
            for off in range(20):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", base + off))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for the fleet")
