"""The agent's outbound connection to the router (sites accept no inbound connections).

:class:`Uplink` dials ``Router.AgentConnect``, says hello, and serves the calls the router
sends down the stream (site-bound requests, e.g. ``edge_only`` requests entering the cloud)
with a handler, streaming each answer back tagged with its call id. It reconnects with
exponential backoff and jitter; mTLS when certificates are given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc

from fleetvl.engines import Engine
from fleetvl.errors import InputError
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from fleetvl.protocol import keepalive
from fleetvl.protocol.channels import TlsFiles, open_channel
from fleetvl.protocol.convert import logprob_message
from fleetvl.protocol.grpc_status import caller_detail, grpc_status
from fleetvl.protocol.request import ChatRequest, RequestLimits
from fleetvl.sampling import CancelToken
from fleetvl.threaded_stream import stream_in_thread

__all__ = ["Uplink", "UplinkConfig", "engine_handler"]

log = logging.getLogger("fleetvl.edge.uplink")

Handler = Callable[[pb.GenerateRequest, threading.Event], AsyncIterator[pb.GenerateChunk]]


@dataclass(frozen=True)
class UplinkConfig:
    router: str  # host:port of the router's gRPC listener
    site: str
    models: tuple[str, ...] = ()
    slots: int = 1
    api_key: str | None = None
    agent_version: str = "0.1.0"
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None  # client certificate (mTLS)
    tls_key_file: str | None = None
    backoff_s: float = 0.2
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 3.0  # transport + TLS handshake, per attempt
    keepalive_s: float = 1.0  # ping period, and how long an unanswered ping is waited for


class Uplink:
    def __init__(self, config: UplinkConfig, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self.connected = asyncio.Event()
        self.connects = 0
        self._calls: dict[str, tuple[asyncio.Task[None], threading.Event]] = {}

    def _channel(self) -> grpc.aio.Channel:
        c = self.config
        # grpc's own reconnect backoff (up to 120 s) would outlast a short outage.
        opts = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000),
                *keepalive.client_options(c.keepalive_s)]  # fmt: skip
        tls = TlsFiles(c.tls_ca_file, c.tls_cert_file, c.tls_key_file) if c.tls_ca_file else None
        return open_channel(c.router, tls, opts)

    async def run(self) -> None:
        """Stay connected until cancelled."""
        backoff = self.config.backoff_s
        while True:
            try:
                await self._session()
                backoff = self.config.backoff_s  # a clean end: the router went away
            except TimeoutError:
                log.warning("uplink: router %s not reachable", self.config.router)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED):  # fmt: skip
                    log.error("router refused this agent: %s", exc.details())
                else:
                    log.warning("uplink lost: %s", exc.code().name)
            finally:
                self.connected.clear()
                for task, cancel in self._calls.values():
                    cancel.set()
                    task.cancel()
                self._calls.clear()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.config.max_backoff_s)

    async def _session(self) -> None:
        c = self.config
        outbox: asyncio.Queue[pb.AgentUp] = asyncio.Queue()
        outbox.put_nowait(
            pb.AgentUp(
                hello=pb.AgentHello(
                    site=c.site, agent_version=c.agent_version, models=c.models, slots=c.slots
                )
            )
        )

        async def upstream() -> AsyncIterator[pb.AgentUp]:
            while True:
                yield await outbox.get()

        md = (("authorization", f"Bearer {c.api_key}"),) if c.api_key else ()
        async with self._channel() as channel:
            # Up only once the transport (and TLS handshake) is: the agent's escalation path
            # reads ``connected`` as the uplink's state, so it must not flap up on a refusal.
            await asyncio.wait_for(channel.channel_ready(), c.connect_timeout_s)
            stream = pb_grpc.RouterStub(channel).AgentConnect(upstream(), metadata=md)
            self.connects += 1
            self.connected.set()
            log.info("uplink to %s open for site %s", c.router, c.site)
            try:
                async for down in stream:
                    if down.HasField("call"):
                        cancel = threading.Event()
                        task = asyncio.create_task(self._serve(down.call, cancel, outbox))
                        self._calls[down.call.call_id] = (task, cancel)
                    elif down.HasField("cancel") and down.cancel.call_id in self._calls:
                        self._calls[down.cancel.call_id][1].set()
            finally:
                stream.cancel()

    async def _serve(
        self, call: pb.AgentCall, cancel: threading.Event, outbox: asyncio.Queue[pb.AgentUp]
    ) -> None:
        cid = call.call_id
        try:
            async with asyncio.timeout(call.timeout_s or None):
                async for chunk in self.handler(call.request, cancel):
                    outbox.put_nowait(pb.AgentUp(chunk=pb.CallChunk(call_id=cid, chunk=chunk)))
            outbox.put_nowait(pb.AgentUp(chunk=pb.CallChunk(call_id=cid, end=True)))
        except TimeoutError:
            cancel.set()
            outbox.put_nowait(
                pb.AgentUp(
                    chunk=pb.CallChunk(
                        call_id=cid,
                        end=True,
                        error_code="DEADLINE_EXCEEDED",
                        error="deadline passed",
                    )
                )
            )
        except asyncio.CancelledError:
            cancel.set()
            raise
        except Exception as exc:  # answered as an error; the uplink stays up
            log.exception("call %s failed", cid)
            code = grpc_status(exc) or grpc.StatusCode.INTERNAL
            # A request's own fault is named; anything else stays in the site's log.
            shown = caller_detail(code, str(exc)) or "the site agent failed it (logged at the site)"
            outbox.put_nowait(
                pb.AgentUp(
                    chunk=pb.CallChunk(call_id=cid, end=True, error_code=code.name, error=shown)
                )
            )
        finally:
            self._calls.pop(cid, None)


def engine_handler(engine: Engine, signal: str = "mean_logprob") -> Handler:
    """A handler answering calls with an engine (in a worker thread)."""
    lock = asyncio.Lock()

    async def handle(
        req: pb.GenerateRequest, cancel: threading.Event
    ) -> AsyncIterator[pb.GenerateChunk]:
        call, missing = ChatRequest.from_pb(req, RequestLimits())
        if missing:
            raise InputError(f"call without the bytes of images {missing}")
        token = CancelToken()

        def chunks() -> Iterator[pb.GenerateChunk]:
            prompt = engine.encode(call.messages, [i.data for i in call.images])
            gen = engine.stream(prompt, call.params, cancel=token)
            for ev in gen:
                prob = ev.confidence.prob if ev.confidence else None
                delta = pb.Delta(text=ev.text, index=ev.index, token_prob=prob,
                                 logprob=logprob_message(ev.logprob))  # fmt: skip
                yield pb.GenerateChunk(delta=delta)
                if cancel.is_set():
                    token.cancel()
            r = gen.result
            assert r is not None  # set when the stream ends
            conf = r.confidence.as_dict().get(signal) if r.token_ids else float("nan")
            yield pb.GenerateChunk(final=pb.Final(
                text=r.text, finish_reason=r.finish_reason, served_by="edge",
                confidence=conf, confidence_signal=signal,
                usage=pb.Usage(prompt_tokens=r.prompt_tokens,
                               completion_tokens=len(r.token_ids)),
                timings=pb.Timings(ttft_ms=r.ttft_s * 1000),
            ))  # fmt: skip

        # One request at a time per engine.
        async with lock, contextlib.aclosing(stream_in_thread(chunks, token)) as stream:
            async for chunk in stream:
                yield chunk

    return handle
