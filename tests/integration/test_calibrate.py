"""``fleetvl calibrate`` on a labelled set: a calibration file the gate can use."""

from __future__ import annotations

import json
from pathlib import Path

from fleetvl.vlm.calibration import Calibration
from fleetvl_tools.cli import main
from tests.helpers import png_bytes, random_image


def test_calibrate_writes_thresholds_per_signal(fp32_bundle: Path, tmp_path: Path) -> None:
    lines = []
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(random_image(56, 56, seed=i)))
        lines.append(json.dumps({"image": f"{i}.png", "question": "read it", "answer": "x"}))
    (tmp_path / "set.jsonl").write_text("\n".join(lines))
    out = tmp_path / "calibration.json"
    rc = main(["calibrate", str(fp32_bundle), str(tmp_path / "set.jsonl"), "--max-tokens", "4",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    cal = Calibration.model_validate_json(out.read_text())
    assert cal.examples == 6
    assert {"mean_prob", "min_prob", "mean_margin"} <= set(cal.signals)
    curve = cal.signals["mean_prob"].curve
    assert [p.threshold for p in curve] == sorted(p.threshold for p in curve)
    assert curve[0].escalation_rate == 0.0  # the lowest threshold releases everything

    (tmp_path / "set.jsonl").write_text('{"question": "no answer field"}')
    assert main(["calibrate", str(fp32_bundle), str(tmp_path / "set.jsonl")]) == 2


def test_the_agent_gates_with_the_bundles_calibration(fp32_bundle: Path, tmp_path: Path) -> None:
    import asyncio
    import shutil

    from edge_agent.agent import Agent, AgentConfig
    from edge_agent.agent.answers import Answer
    from fleetvl.policy import PolicyOverride
    from fleetvl.protocol.request import ChatRequest, ImageRef
    from fleetvl.sampling import SamplingParams

    bundle = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, bundle)
    png = png_bytes(random_image(56, 56, seed=0))
    (tmp_path / "0.png").write_bytes(png)
    # Labels that make two answers right (the model's own greedy answer to "q0") and two
    # wrong, so the curve has both classes and finite thresholds.
    from edge_agent.engine import EdgeEngine

    engine = EdgeEngine(bundle)
    content = [{"type": "image"}, {"type": "text", "text": "q0"}]
    own = engine.generate(engine.encode([{"role": "user", "content": content}], [png]),
                          SamplingParams(max_tokens=4)).text  # fmt: skip
    lines = [json.dumps({"image": "0.png", "question": q, "answer": a})
             for q, a in (("q0", own), ("q0", own), ("q1", "x"), ("q1", "x"))]  # fmt: skip
    (tmp_path / "set.jsonl").write_text("\n".join(lines))
    assert main(["calibrate", str(bundle), str(tmp_path / "set.jsonl"), "--max-tokens", "4"]) == 0
    cal = Calibration.model_validate_json((bundle / "calibration.json").read_text())

    cfg = AgentConfig(site="s", bundle=bundle, spool={"path": tmp_path / "s.db"})
    assert cfg.gate.threshold_source == "calibration"

    async def go() -> Answer:
        agent = Agent(cfg)
        await agent.start()
        try:
            # The two right answers score highest: released alone they are 2 of 2, a 95%
            # lower bound of 0.43 on their accuracy, so 0.4 is the most this set can show.
            want = cal.signals["mean_prob"].threshold_for_accuracy(0.4)
            got = agent.service.gate(0.4).threshold
            assert got == want
            req = ChatRequest(
                id="r", tenant="t", model="edge",
                messages=[{"role": "user", "content": [{"type": "image"},
                                                       {"type": "text", "text": "q0"}]}],
                images=[ImageRef("d", png, 16)], params=SamplingParams(max_tokens=4),
                requested_max_tokens=4, sla=PolicyOverride(min_confidence=0.4),
            )  # fmt: skip
            out = [ev async for ev in agent.service.handle(req)]
            assert isinstance(out[-1], Answer)
            return out[-1]
        finally:
            await agent.stop()

    answer = asyncio.run(go())
    assert cal.base_accuracy == 0.5
    want = cal.signals["mean_prob"].threshold_for_accuracy(0.4)
    assert want != float("inf")
    assert cal.signals["mean_prob"].threshold_for_accuracy(0.5) == float("inf")
    assert answer.gate is not None
    assert answer.gate["threshold"] == want
