"""``fleetvl calibrate`` on a labelled set: a calibration file the gate can use."""

from __future__ import annotations

import json
from pathlib import Path

from fleetvl.cli import main
from fleetvl.vlm.calibration import Calibration
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
