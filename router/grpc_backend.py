"""Remote dispatch: a backend reached over ``fleetvl.v1.Router`` gRPC (digest-first images)."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator

import grpc

from fleetvl.protocol import fleetvl_pb2 as pb
from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc
from router.backends import BackendError, BackendKind, BackendRequest, Delta, Event, Final

__all__ = ["GrpcBackend"]


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
            if self._tls_ca_file:
                with open(self._tls_ca_file, "rb") as f:
                    creds = grpc.ssl_channel_credentials(root_certificates=f.read())
                self._channel = grpc.aio.secure_channel(self.target, creds)
            else:
                self._channel = grpc.aio.insecure_channel(self.target)
            self._stub_ = pb_grpc.RouterStub(self._channel)
        return self._stub_

    def _request(self, req: BackendRequest, with_bytes: set[str]) -> pb.GenerateRequest:
        images = iter(req.images)
        messages = []
        for m in req.messages:
            parts = []
            for p in m["content"]:
                if p.get("type") == "image":
                    img = next(images)
                    data = img.data if img.digest in with_bytes else b""
                    parts.append(pb.ContentPart(image=pb.Image(digest=img.digest, data=data)))
                else:
                    parts.append(pb.ContentPart(text=p.get("text", "")))
            messages.append(pb.Message(role=m["role"], content=parts))
        pol = req.policy
        return pb.GenerateRequest(
            request_id=req.id,
            tenant=req.tenant,
            site=req.site or "",
            model=req.model,
            messages=messages,
            sampling=pb.Sampling(
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                top_k=req.top_k,
                seed=req.seed,
                stop=req.stop,
            ),  # fmt: skip
            # The policy is already resolved here; the remote end must not loosen it.
            sla=pb.Sla(
                min_confidence=pol.min_confidence,
                residency=pol.residency.value,
                priority=pol.priority.value,
                max_output_tokens=pol.max_output_tokens,
                cache=pol.cache.value,
            ),
        )

    async def generate(self, req: BackendRequest) -> AsyncIterator[Event]:
        with_bytes: set[str] = set()
        for _attempt in range(2):
            timeout = req.deadline - time.monotonic() if req.deadline else None
            if timeout is not None and timeout <= 0:
                raise BackendError(f"{self.name}: no time left to dispatch")
            call = self._stub.Generate(
                self._request(req, with_bytes), timeout=timeout, metadata=self._metadata
            )
            need: list[str] = []
            try:
                async for chunk in call:
                    kind = chunk.WhichOneof("kind")
                    if kind == "need_images":
                        need = list(chunk.need_images.digests)
                    elif kind == "delta":
                        d = chunk.delta
                        yield Delta(
                            d.text, d.index, d.token_prob if d.HasField("token_prob") else None
                        )
                    elif kind == "final":
                        f = chunk.final
                        yield Final(
                            text=f.text, finish_reason=f.finish_reason,
                            confidence=None if math.isnan(f.confidence) else f.confidence,
                            confidence_signal=f.confidence_signal,
                            prompt_tokens=f.usage.prompt_tokens,
                            completion_tokens=f.usage.completion_tokens,
                            ttft_s=f.timings.ttft_ms / 1000, served_by=f.served_by,
                        )  # fmt: skip
                    if req.cancel.is_set():
                        call.cancel()
                        return
            except grpc.aio.AioRpcError as exc:
                raise BackendError(f"{self.name}: {exc.code().name}: {exc.details()}") from None
            finally:
                call.cancel()
            if not need:
                return
            with_bytes = set(need)
        raise BackendError(f"{self.name} asked for images twice")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
