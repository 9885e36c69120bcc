"""Remote dispatch: a backend reached over ``fleetvl.v1.Router`` gRPC (digest-first images)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator

import grpc

from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from fleetvl.protocol.channels import TlsFiles, open_channel
from fleetvl.protocol.grpc_status import public_detail
from router.backends import BackendError, BackendKind, BackendRequest, Event
from router.wire import event_from_chunk, to_generate_request

__all__ = ["GrpcBackend"]

log = logging.getLogger("fleetvl.router")


class GrpcBackend:
    def __init__(
        self,
        name: str,
        target: str,
        *,
        kind: BackendKind = "cloud",
        site: str | None = None,
        slots: int = 1,
        models: tuple[str, ...] = (),
        tls_ca_file: str | None = None,
        api_key: str | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.site = site
        self.slots = slots
        self.models = models
        self.target = target
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._tls_ca_file = tls_ca_file
        self._channel: grpc.aio.Channel | None = None
        self._stub_: pb_grpc.RouterStub | None = None

    @property
    def _stub(self) -> pb_grpc.RouterStub:
        # Created on first use: an aio channel belongs to the event loop that serves requests.
        if self._stub_ is None:
            tls = TlsFiles(self._tls_ca_file) if self._tls_ca_file else None
            self._channel = open_channel(self.target, tls)
            self._stub_ = pb_grpc.RouterStub(self._channel)
        return self._stub_

    async def generate(self, req: BackendRequest) -> AsyncGenerator[Event, None]:
        with_bytes: set[str] = set()
        for _attempt in range(2):
            timeout = req.deadline - time.monotonic() if req.deadline else None
            if timeout is not None and timeout <= 0:
                raise BackendError(f"{self.name}: no time left to dispatch")
            call = self._stub.Generate(
                to_generate_request(req, with_bytes), timeout=timeout, metadata=self._metadata
            )
            need: list[str] = []
            try:
                async for chunk in call:
                    if chunk.WhichOneof("kind") == "need_images":
                        need = list(chunk.need_images.digests)
                    elif (ev := event_from_chunk(chunk)) is not None:
                        yield ev
                    if req.cancel.is_set():
                        call.cancel()
                        return
            except grpc.aio.AioRpcError as exc:
                log.warning("backend %s failed request %s: %s: %s", self.name, req.id,
                            exc.code().name, exc.details())  # fmt: skip
                raise BackendError(
                    f"{self.name}: {public_detail(exc.code(), exc.details())}"
                ) from None
            finally:
                call.cancel()
            if not need:
                return
            with_bytes = set(need)
        raise BackendError(f"{self.name} asked for images twice")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
