"""Images by digest on the wire, resolved from a store off the event loop.

A request names its images by digest first; a tier that holds the bytes (the shared Redis, or
a router's memory) fills them in, and answers ``NeedImages`` for the rest, so an image crosses
a site's uplink once. The store is synchronous (its Redis calls are bounded by timeouts and a
breaker); here its reads and writes run in a worker thread so an async server's loop never
waits on Redis.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, Unpack

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol.request import ChatRequest, FromPbOptions, RequestLimits

__all__ = ["ImageStore", "chat_from_pb"]


class ImageStore(Protocol):
    """Image bytes by their SHA-256: the shared cache's (:meth:`fleetvl.cache.FleetCache.images`)
    or a process's own."""

    def put(self, data: bytes) -> str | None: ...

    def get(self, digest: str) -> bytes | None: ...


async def chat_from_pb(
    msg: pb.GenerateRequest,
    limits: RequestLimits,
    store: ImageStore | None,
    *,
    keep_inline: bool = True,
    **kw: Unpack[FromPbOptions],
) -> tuple[ChatRequest, list[str], int]:
    """:meth:`ChatRequest.from_pb` with images sent by digest taken from ``store`` and those
    sent inline stored there (both in a worker thread): the request, the digests of images
    neither sent nor stored, and the image bytes that came inline. A ``cache_only`` request
    needs only digests: nothing is fetched. ``keep_inline`` False: a tier behind one that
    stores them (the cloud worker behind the router) only reads.

    Raises:
        InputError: as :meth:`ChatRequest.from_pb`.
    """
    wanted = [] if msg.cache_only else [
        p.image.digest for m in msg.messages for p in m.content
        if p.WhichOneof("part") == "image" and not p.image.data and p.image.digest
    ]  # fmt: skip
    found: dict[str, bytes | None] = {}
    if store is not None and wanted:
        found = await asyncio.to_thread(lambda: {d: store.get(d) for d in wanted})
    inline: list[bytes] = []
    req, missing = ChatRequest.from_pb(msg, limits, stored=found.get, keep=inline.append, **kw)
    if store is not None and inline and keep_inline:
        await asyncio.to_thread(lambda: [store.put(b) for b in inline])
    return req, missing, sum(len(b) for b in inline)
