"""The agent's ControlHandler side (what the control-plane client calls), on a real daemon
core with real engines: pushed policies, bundle hot-swap under load, the metrics summary."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.agent import Agent, AgentConfig
from edge_agent.agent.answers import Answer
from fleetvl.errors import BundleError
from fleetvl.protocol.request import ChatRequest, ImageRef
from fleetvl.sampling import SamplingParams
from fleetvl.vlm.bundle_archive import archive_digest
from tests.helpers import png_bytes, random_image


def _request(max_tokens: int) -> ChatRequest:
    return ChatRequest(
        id=f"r{max_tokens}", tenant="t", model="edge",
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}],
        images=[ImageRef("d", png_bytes(random_image(56, 56)), 4)],
        params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        requested_max_tokens=max_tokens,
    )  # fmt: skip


async def _answer(agent: Agent, req: ChatRequest) -> Answer:
    out = [ev async for ev in agent.service.handle(req)]
    assert isinstance(out[-1], Answer)
    return out[-1]


def test_control_handler_on_the_daemon(
    fp32_bundle: Path, bundle_factory: Callable[[str, str], Path], tmp_path: Path
) -> None:
    int4 = bundle_factory("qwen2_5_vl", "int4")
    # The control plane names bundles by the address of their archive.
    int4_digest = archive_digest(int4)
    cfg = AgentConfig(site="s", bundle=fp32_bundle, spool={"path": tmp_path / "s.db"},
                      controller={"target": "127.0.0.1:9", "token": "t"})  # fmt: skip

    async def main() -> None:
        agent = Agent(cfg)
        await agent.start()
        control = agent.control
        assert control is not None
        try:
            control.apply_policies({"site": {"min_confidence": 0.0, "max_output_tokens": 200}})
            pol = agent.service.resolve(None)
            assert pol.policy.min_confidence == 0.0
            assert pol.sources["min_confidence"].value == "site"
            with pytest.raises(ValidationError):
                control.apply_policies({"site": {"min_confidence": 7}})
            assert agent.service.resolve(None).policy.min_confidence == 0.0  # unchanged

            old = control.bundles_held()
            assert old == [archive_digest(fp32_bundle)]  # what it started from
            inflight = asyncio.create_task(_answer(agent, _request(150)))
            await asyncio.sleep(0.05)  # let it take an engine
            # The client calls from its own thread; the swap must not wait for the request.
            await asyncio.to_thread(control.install_bundle, int4, int4_digest)
            assert control.bundles_held() == [int4_digest] != old
            done = await inflight
            assert done.served_by == "edge"
            assert done.local_tokens == 150
            after = await _answer(agent, _request(4))
            assert after.served_by == "edge"
            # A damaged unpacked bundle is refused and the engines in service stay.
            broken = tmp_path / "broken"
            shutil.copytree(int4, broken)
            victim = next(p for p in sorted(broken.iterdir()) if p.suffix == ".onnx")
            victim.write_bytes(victim.read_bytes()[:100])
            with pytest.raises(BundleError):
                await asyncio.to_thread(control.install_bundle, broken, "sha256:" + "0" * 64)
            assert control.bundles_held() == [int4_digest]
            assert (await _answer(agent, _request(2))).served_by == "edge"

            outcomes = ((10, True, "edge", True), (30, True, "cloud", False),
                        (5, True, "cache", True), (8, True, "cache", True))  # fmt: skip
            for ms, ok, by, met in outcomes:
                control.record(ms, ok, by, met)
            s = control.summary()
            assert s["requests"] == 4
            assert s["escalation_rate"] == 0.25
            assert s["cache_rate"] == 0.5
            assert s["sla_attainment"] == 0.75
            assert s["p95_ms"] == 30
            assert control.summary()["requests"] == 0  # since the last call
            with pytest.raises(ValueError, match="unknown command"):
                control.run_command("reboot", {})
        finally:
            await agent.stop()

    asyncio.run(main())
