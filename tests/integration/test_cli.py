"""The `fleetvl` command as a user runs it: a real process, exit codes, readable errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import random_image


def _fleetvl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleetvl_tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ask_answers_with_timings(fp32_bundle: Path, tmp_path: Path) -> None:
    img = tmp_path / "gauge.jpg"
    random_image(200, 300).save(img)
    proc = _fleetvl(
        "ask",
        str(fp32_bundle),
        "What does the gauge read?",
        "--image",
        str(img),
        "--max-tokens",
        "6",
        "--ignore-eos",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["generated_tokens"] == 6
    assert out["finish_reason"] == "length"
    assert out["prompt_tokens"] > 6
    assert out["ttft_s"] > 0
    assert 0 < out["confidence"]["min_prob"] <= 1


def test_ask_with_corrupt_image_exits_2_with_reason(fp32_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    proc = _fleetvl("ask", str(fp32_bundle), "Gauge?", "--image", str(bad))
    assert proc.returncode == 2
    assert "error: image" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ask_with_missing_bundle_exits_2(tmp_path: Path) -> None:
    proc = _fleetvl("ask", str(tmp_path / "none"), "Gauge?")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
