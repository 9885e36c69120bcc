"""The agent's side of the control plane: one outbound gRPC stream to the controller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import grpc
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.control._download import BundleRefused, fetch_bundle
from fleetvl.protocol import control_pb2 as cpb
from fleetvl.protocol import control_pb2_grpc as cpb_grpc
from fleetvl.protocol.channels import TlsFiles, open_channel

__all__ = ["ControlClient", "ControlClientConfig", "ControlHandler", "SourceSnapshot"]

log = logging.getLogger("fleetvl.agent.control")
# The pushes a handler of _run takes.
_Push = TypeVar("_Push", cpb.PolicyPush, cpb.BundleAssignment, cpb.Command)


class ControlClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="Controller gRPC address, host:port.")
    site: str = Field(min_length=1, description="This site's id, as declared in the fleet spec.")
    agent_version: str = Field("0.1.0", description="Reported at registration.")
    token: str | None = Field(None, description="Per-agent credential (Bearer).")
    tls_ca_file: Path | None = Field(None, description="CA that signed the controller's cert.")
    tls_cert_file: Path | None = Field(None, description="Client certificate (mTLS).")
    tls_key_file: Path | None = Field(None, description="Client key (mTLS).")
    tls_server_name: str | None = Field(None, description="Override the expected server name.")
    heartbeat_s: float = Field(5.0, gt=0, description="Heartbeat interval, seconds.")
    bundle_dir: Path = Field(description="Where verified bundles are unpacked.")
    reconnect_min_s: float = Field(0.2, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(10.0, gt=0, description="Reconnect delay cap (backoff).")
    download_timeout_s: float = Field(120.0, gt=0, description="Bundle download socket timeout.")
    active_bundle: str | None = Field(
        None,
        description="Digest of the bundle the agent serves at start (e.g. from site.yaml), so "
        "the controller does not send it again.",
    )


@runtime_checkable
class ControlHandler(Protocol):
    """What the running agent does with pushes (implemented by the agent daemon)."""

    def apply_policies(self, policies: dict[str, dict[str, object]]) -> None:
        """Pushed SLA layers {"global", "tenant", "site"} in fleetvl.policy field names."""

    def install_bundle(self, bundle_dir: Path, digest: str) -> None:
        """Hot-swap to a verified bundle without dropping in-flight requests; raise to fail."""

    def run_command(self, name: str, args: dict[str, str]) -> None:
        """reload | recalibrate."""

    def summary(self) -> dict[str, float]:
        """requests, errors, escalation_rate, sla_attainment, p95_ms since the last call."""

    def bundles_held(self) -> list[str]:
        """Digests of bundles on disk."""


class SourceSnapshot(Protocol):
    """One image source's recent verdicts (``edge_agent.agent.source_health.SourceStatus``
    has this shape)."""

    @property
    def source(self) -> str: ...
    @property
    def frames(self) -> int: ...
    @property
    def out_of_scope(self) -> int: ...
    @property
    def last_part(self) -> str: ...


def _int32(x: int) -> int:
    return max(-(2**31), min(int(x), 2**31 - 1))


def _sources(snapshot: Iterable[SourceSnapshot]) -> list[cpb.SourceHealth]:
    return [
        cpb.SourceHealth(
            source=x.source or "",
            frames=_int32(x.frames),
            out_of_scope=_int32(x.out_of_scope),
            last_part=x.last_part or "",
        )
        for x in snapshot
    ]


def _hardware() -> cpb.Hardware:
    mem = 0
    with contextlib.suppress(OSError, ValueError, AttributeError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return cpb.Hardware(
        cpu=platform.processor() or platform.machine(), cores=os.cpu_count() or 0, memory_bytes=mem
    )


class ControlClient:
    """Dial, register, heartbeat and apply pushes; reconnect with backoff until :meth:`stop`.

    State the controller may ask about after a reconnect (active bundle, policy version) is
    kept here, so a resync after a controller restart reinstalls nothing already running.
    """

    def __init__(
        self,
        config: ControlClientConfig,
        handler: ControlHandler,
        sources: Callable[[], Iterable[SourceSnapshot]] | None = None,
    ) -> None:
        """Build the client; nothing is dialled before :meth:`run`.

        Args:
            sources: called on the event loop once per heartbeat (keep it cheap); every
                image source the agent keeps, with its recent out-of-scope verdicts. The
                heartbeat carries all of them; the controller turns a run of out-of-scope
                frames into a site health alert. None: heartbeats report no sources.
        """
        self.config = config
        self.handler = handler
        self.sources = sources
        self.active_bundle = config.active_bundle or ""
        self.policy_version = 0
        self.connected = asyncio.Event()
        self.sessions = 0  # successful registrations (reconnects counted)
        self.attempts = 0  # dials, successful or not
        self.last_error = ""  # why the last session ended or failed, for the agent's status
        self._stop = asyncio.Event()
        self._out: asyncio.Queue[cpb.AgentMessage | None] = asyncio.Queue()
        self._install_lock = asyncio.Lock()
        self._seq = 0

    async def stop(self) -> None:
        self._stop.set()
        self._out.put_nowait(None)

    def _channel(self) -> grpc.aio.Channel:
        c = self.config
        tls = None
        if c.tls_ca_file is not None or c.tls_cert_file is not None:
            tls = TlsFiles(c.tls_ca_file, c.tls_cert_file, c.tls_key_file, c.tls_server_name)
        return open_channel(c.target, tls, [("grpc.keepalive_time_ms", 30_000)])

    async def run(self) -> None:
        delay = self.config.reconnect_min_s
        while not self._stop.is_set():
            registered_before = self.sessions
            self.attempts += 1
            try:
                await self._session()
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{exc.code().name}: {exc.details()}"
                log.warning("control session ended: %s", self.last_error)
            except Exception as exc:  # a handler bug must not end the agent's control plane
                self.last_error = repr(exc)
                log.exception("control session failed")
            self.connected.clear()
            if self.sessions > registered_before:
                delay = self.config.reconnect_min_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay * (0.5 + random.random()))
            delay = min(delay * 2, self.config.reconnect_max_s)

    async def _requests(self) -> AsyncIterator[cpb.AgentMessage]:
        held = await asyncio.to_thread(self.handler.bundles_held)
        yield cpb.AgentMessage(
            register=cpb.Register(
                site=self.config.site,
                agent_version=self.config.agent_version,
                bundles_held=held,
                hardware=_hardware(),
                active_bundle=self.active_bundle,
                policy_version=self.policy_version,
            )
        )
        while (msg := await self._out.get()) is not None:
            yield msg

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            s = self.handler.summary()
            self._seq += 1
            self._out.put_nowait(
                cpb.AgentMessage(
                    heartbeat=cpb.Heartbeat(
                        seq=self._seq,
                        active_bundle=self.active_bundle,
                        bundles_held=self.handler.bundles_held(),
                        sources=self._source_health(),
                        metrics=cpb.MetricSummary(
                            **{
                                k: float(s.get(k, 0.0))
                                for k in (
                                    "requests",
                                    "errors",
                                    "escalation_rate",
                                    "sla_attainment",
                                    "p95_ms",
                                    "cache_rate",
                                )
                            }
                        ),
                    )
                )
            )

    def _source_health(self) -> list[cpb.SourceHealth]:
        if self.sources is None:
            return []
        try:
            return _sources(self.sources())
        except Exception:  # a broken health report must not stop the heartbeats
            log.exception("source health snapshot failed; heartbeat sent without it")
            return []

    async def _session(self) -> None:
        self._out = asyncio.Queue()
        md = (("authorization", f"Bearer {self.config.token}"),) if self.config.token else None
        tasks: set[asyncio.Task[None]] = set()
        async with self._channel() as channel:
            call = cpb_grpc.ControlStub(channel).Connect(self._requests(), metadata=md)
            stopper = asyncio.create_task(self._stop.wait())
            try:
                reader = aiter(call)
                while True:
                    nxt = asyncio.ensure_future(anext(reader))
                    done, _ = await asyncio.wait({nxt, stopper}, return_when="FIRST_COMPLETED")
                    if stopper in done:
                        nxt.cancel()
                        call.cancel()
                        return
                    try:
                        msg = nxt.result()
                    except StopAsyncIteration:
                        return
                    await self._handle(msg, tasks)
            finally:
                stopper.cancel()
                for t in tasks:
                    t.cancel()
                self._out.put_nowait(None)

    async def _handle(self, msg: cpb.ControllerMessage, tasks: set[asyncio.Task[None]]) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "welcome":
            self.sessions += 1
            self.connected.set()
            hb = asyncio.create_task(self._heartbeats())
            tasks.add(hb)
        elif kind == "policies":
            await self._run(msg.push_id, self._policies, msg.policies)
        elif kind == "bundle":
            # Downloads run beside the stream so heartbeats and policies keep flowing.
            t = asyncio.create_task(self._run(msg.push_id, self._bundle, msg.bundle))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        elif kind == "command":
            await self._run(msg.push_id, self._command, msg.command)

    async def _run(
        self, push_id: str, fn: Callable[[_Push], Awaitable[None]], arg: _Push
    ) -> None:
        try:
            await fn(arg)
        except Exception as exc:
            log.warning("push %s refused: %s", push_id, exc)
            self._out.put_nowait(
                cpb.AgentMessage(ack=cpb.Ack(push_id=push_id, ok=False, error=str(exc)[:1000]))
            )
        else:
            self._out.put_nowait(cpb.AgentMessage(ack=cpb.Ack(push_id=push_id, ok=True)))

    async def _policies(self, p: cpb.PolicyPush) -> None:
        layers = json.loads(p.layers_json)
        self.handler.apply_policies(layers)
        self.policy_version = p.version

    async def _command(self, c: cpb.Command) -> None:
        await asyncio.to_thread(self.handler.run_command, c.name, dict(c.args))

    async def _bundle(self, b: cpb.BundleAssignment) -> None:
        async with self._install_lock:
            if b.digest == self.active_bundle:
                return
            try:
                path = await asyncio.to_thread(
                    fetch_bundle,
                    b.url,
                    b.digest,
                    self.config.bundle_dir,
                    self.config.token if b.send_credential else None,
                    self.config.download_timeout_s,
                    _Progress(b.digest),
                )
            except BundleRefused as exc:
                raise RuntimeError(f"bundle refused: {exc}") from None
            await asyncio.to_thread(self.handler.install_bundle, path, b.digest)
            self.active_bundle = b.digest


class _Progress:
    """Logs a bundle download every 10% (bundles are hundreds of MB on thin site uplinks)."""

    def __init__(self, digest: str) -> None:
        self.digest = digest[:19]
        self.next = 0.1

    def __call__(self, done: int, total: int) -> None:
        if total and done / total >= self.next:
            log.info("bundle %s: %d%% of %d MB", self.digest, 100 * done // total, total >> 20)
            self.next = (done / total // 0.1 + 1) * 0.1
