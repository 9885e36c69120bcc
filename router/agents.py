"""Site agents' outbound connections, and the backend that dispatches through them.

A site box accepts no inbound connections, so its agent dials the router
(``Router.AgentConnect``) and keeps the stream open; the router sends site-bound requests
(``edge_only`` requests entering the cloud) down that stream as ``AgentCall`` and the agent
streams each answer back as ``CallChunk`` tagged with the call id. An :class:`AgentBackend` is
configured per site (``type: agent``); it is available only while its agent is connected, and
a disconnect fails the calls in flight with a clear error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable

import grpc

from fleetvl.protocol import fleetvl_pb2 as pb
from router.backends import BackendError, BackendKind, BackendRequest, Event
from router.wire import event_from_chunk, to_generate_request

__all__ = ["AgentBackend", "AgentConnection", "serve_agent_stream"]

log = logging.getLogger("fleetvl.router")


class AgentConnection:
    """One connected agent: outgoing calls, and per-call queues of incoming chunks."""

    def __init__(self, hello: pb.AgentHello) -> None:
        self.hello = hello
        self.outbox: asyncio.Queue[pb.AgentDown | None] = asyncio.Queue()
        self.calls: dict[str, asyncio.Queue[pb.CallChunk | None]] = {}
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for q in self.calls.values():
            q.put_nowait(None)
        self.outbox.put_nowait(None)


class AgentBackend:
    """Requests for one site, served by that site's agent over its outbound connection."""

    kind: BackendKind = "edge"

    def __init__(self, name: str, site: str, *, slots: int = 1, models: tuple[str, ...] = ()):
        self.name = name
        self.site: str | None = site
        self.slots = slots
        self.models = models
        self._configured = bool(models)
        self.conn: AgentConnection | None = None
        self._ids = itertools.count()
        self.retired = False  # the controller removed the site: its agent is turned away

    @property
    def available(self) -> bool:
        return not self.retired and self.conn is not None and not self.conn.closed

    def retire(self, retired: bool = True) -> None:
        self.retired = retired
        if retired and self.conn is not None:
            self.conn.close()

    def attach(self, conn: AgentConnection) -> None:
        if self.conn is not None:
            self.conn.close()  # a reconnecting agent replaces its stale stream
        self.conn = conn
        if not self._configured:  # the models the site's agent says it serves
            self.models = tuple(conn.hello.models)

    def detach(self, conn: AgentConnection) -> None:
        conn.close()
        if self.conn is conn:
            self.conn = None

    async def generate(self, req: BackendRequest) -> AsyncGenerator[Event, None]:
        conn = self.conn
        if conn is None or conn.closed:
            raise BackendError(f"site {self.site}'s agent is not connected")
        call_id = f"{req.id}-{next(self._ids)}"
        inbox: asyncio.Queue[pb.CallChunk | None] = asyncio.Queue()
        conn.calls[call_id] = inbox
        conn.outbox.put_nowait(
            pb.AgentDown(
                call=pb.AgentCall(
                    call_id=call_id,
                    request=to_generate_request(req),
                    timeout_s=max(req.deadline - time.monotonic(), 0.0) if req.deadline else 0.0,
                )
            )
        )
        done = False
        try:
            while True:
                msg = await inbox.get()
                if msg is None:
                    raise BackendError(f"site {self.site}'s agent disconnected mid-request")
                if msg.HasField("chunk") and (ev := event_from_chunk(msg.chunk)) is not None:
                    yield ev
                if msg.end:
                    done = True
                    if msg.error_code == "DEADLINE_EXCEEDED":
                        # The agent saw the deadline pass first: the caller gets the 504 the
                        # router gives when it sees it itself, not a 502 backend failure.
                        raise TimeoutError(msg.error)
                    if msg.error_code:
                        raise BackendError(f"site agent: {msg.error_code}: {msg.error}")
                    return
        finally:
            conn.calls.pop(call_id, None)
            if not done and not conn.closed:
                conn.outbox.put_nowait(pb.AgentDown(cancel=pb.AgentCancel(call_id=call_id)))

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


async def serve_agent_stream(
    request_iterator: AsyncIterator[pb.AgentUp],
    context: grpc.aio.ServicerContext,
    agents: dict[str, AgentBackend],
) -> AsyncIterator[pb.AgentDown]:
    """The router's side of ``AgentConnect``."""
    first = await anext(aiter(request_iterator), None)
    if first is None or not first.HasField("hello"):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be hello")
        return
    hello = first.hello
    backend = agents.get(hello.site)
    if backend is None:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"site {hello.site!r} has no agent backend configured on this router",
        )
        return
    conn = AgentConnection(hello)
    backend.attach(conn)
    log.info("agent of site %s connected (version %s)", hello.site, hello.agent_version)

    async def pump_up() -> None:
        try:
            async for msg in request_iterator:
                if msg.HasField("chunk"):
                    q = conn.calls.get(msg.chunk.call_id)
                    if q is not None:
                        q.put_nowait(msg.chunk)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            conn.close()

    reader = asyncio.create_task(pump_up())
    try:
        while (out := await conn.outbox.get()) is not None:
            yield out
    finally:
        reader.cancel()
        backend.detach(conn)
        log.info("agent of site %s disconnected", hello.site)


def agent_backends(backends: Iterable[object]) -> dict[str, AgentBackend]:
    """The sites whose agents may connect now, by site."""
    return {b.site or "": b for b in backends if isinstance(b, AgentBackend) and not b.retired}
