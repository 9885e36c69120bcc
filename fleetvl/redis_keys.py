"""The one root of every Redis key FleetVL writes, so a shared Redis (or an ACL, a keyspace
scan, a ``maxmemory`` policy review) sees ``fleetvl:*`` and nothing else of ours.

    fleetvl:cache:1:...        the shared cache (fleetvl.cache.keys: KV blocks, vision
                               embeddings, responses, image blobs); TTLs, evictable
    fleetvl:idem:1:...         the router's finished answers by idempotency key; TTL
    fleetvl:ctl:<namespace>:...  the controller's hard state (policies, assignments, rollouts,
                               audit); no TTL, never to be evicted
"""

from __future__ import annotations

__all__ = ["CACHE", "IDEMPOTENCY", "ROOT", "controller"]

ROOT = "fleetvl"
CACHE = f"{ROOT}:cache:1"  # bump the version when the cache's value formats change
IDEMPOTENCY = f"{ROOT}:idem:1"


def controller(namespace: str) -> str:
    """The prefix of one fleet's controller state (``controller.namespace``)."""
    return f"{ROOT}:ctl:{namespace}:"
