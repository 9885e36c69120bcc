"""Escalation to the router over ``fleetvl.v1`` gRPC: digest-first images, deadline, retries.

The request goes with image digests only; if the router lacks some bytes it answers with one
``NeedImages`` chunk and the request is sent again with just those bytes (site uplinks are
thin). The remaining budget is the gRPC deadline. Errors come back as
:class:`EscalationError` with ``retryable`` saying whether a later try can succeed (the link
or the cloud is away) or not (the router refused the request itself).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from edge_agent.agent.config import RouterLink
from fleetvl.errors import FleetVLError
from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from fleetvl.protocol import keepalive
from fleetvl.protocol.channels import TlsFiles, open_channel

__all__ = ["CloudClient", "EscalationError", "strip_images"]

# Statuses after which the same request may succeed later: transport failures, a busy or
# restarting cloud, a budget that ran out on the way.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
}


class EscalationError(FleetVLError):
    def __init__(self, code: str, details: str, retryable: bool) -> None:
        super().__init__(f"escalation failed: {code}: {details}")
        self.code = code
        self.details = details
        self.retryable = retryable


def strip_images(req: pb.GenerateRequest, keep: set[str]) -> pb.GenerateRequest:
    """A copy of ``req`` whose images carry bytes only when their digest is in ``keep``."""
    out = pb.GenerateRequest()
    out.CopyFrom(req)
    for m in out.messages:
        for p in m.content:
            if p.WhichOneof("part") == "image" and p.image.digest not in keep:
                p.image.data = b""
    return out


class CloudClient:
    """One channel to the router for escalations (created on first use, on the running loop)."""

    def __init__(self, link: RouterLink) -> None:
        self.link = link
        self._metadata = (("authorization", f"Bearer {link.api_key}"),) if link.api_key else ()
        self._channel: grpc.aio.Channel | None = None
        # Until when not to ask the answer cache (a router without one said so).
        self.probe_off_until = 0.0
        self._stub: pb_grpc.RouterStub | None = None

    def stub(self) -> pb_grpc.RouterStub:
        if self._stub is None:
            self._channel = self._open()
            self._stub = pb_grpc.RouterStub(self._channel)
        return self._stub

    def _open(self) -> grpc.aio.Channel:
        c = self.link
        # Retry connecting quickly after an outage instead of grpc's default 20 s ceiling.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            *keepalive.client_options(c.keepalive_s),
        ]
        tls = TlsFiles(c.tls_ca_file, c.tls_cert_file, c.tls_key_file) if c.tls_ca_file else None
        return open_channel(c.target, tls, options)

    async def generate(
        self, req: pb.GenerateRequest, timeout_s: float
    ) -> AsyncIterator[pb.GenerateChunk]:
        """The router's chunks (``Delta``... ``Final``) for ``req`` (images inline in ``req``;
        sent by digest first).

        Raises:
            EscalationError: the call failed; ``retryable`` tells whether to try again later.
        """
        keep: set[str] = set()
        for _ in range(2):
            call = self.stub().Generate(
                strip_images(req, keep), timeout=max(timeout_s, 0.001), metadata=self._metadata
            )
            need: list[str] = []
            try:
                async for chunk in call:
                    if chunk.WhichOneof("kind") == "need_images":
                        need = list(chunk.need_images.digests)
                        continue
                    yield chunk
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                raise EscalationError(code.name, exc.details() or "", code in _RETRYABLE) from None
            finally:
                call.cancel()
            if not need:
                return
            keep = set(need)
        raise EscalationError("FAILED_PRECONDITION", "router asked for images twice", True)

    async def close(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close(None)
            self._channel = self._stub = None
