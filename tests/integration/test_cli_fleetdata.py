"""`fleetvl data write` as a user runs it: a real process, files on disk, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _fleetvl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fleetvl_tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_data_write_produces_a_calibration_split(tmp_path: Path) -> None:
    proc = _fleetvl("data", "write", str(tmp_path), "--split", "val", "--n", "5", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    for rec in lines:
        assert rec["answer"]
        assert rec["question"].endswith(("?", "."))
        assert (tmp_path / rec["images"][0]).is_file()  # relative to the JSONL


def test_data_write_refuses_a_bad_size_with_a_reason(tmp_path: Path) -> None:
    proc = _fleetvl("data", "write", str(tmp_path), "--size", "100")
    assert proc.returncode == 2
    assert "multiple of 28" in proc.stderr
    assert "Traceback" not in proc.stderr
