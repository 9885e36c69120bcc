"""Bad input gets a typed error with a reason; the engine keeps serving afterwards."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.engine.engine import EdgeEngine
from fleetvl.errors import (
    BundleError,
    ImageError,
    ImageTooLarge,
    PromptError,
    UnsupportedImageFormat,
)
from fleetvl.sampling import SamplingParams
from tests.helpers import png_bytes, random_image
from tests.unit.test_image import _png_declaring

Q = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Gauge?"}]}]


@pytest.fixture(scope="module")
def engine(fp32_bundle: Path) -> EdgeEngine:
    return EdgeEngine(fp32_bundle)


def _tiff() -> bytes:
    import io

    buf = io.BytesIO()
    random_image(20, 20).save(buf, format="TIFF")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"", ImageError, "empty"),
        (b"\x00\x01garbage" * 50, ImageError, "not a recognised"),
        (png_bytes(random_image(300, 300))[:900], ImageError, "truncated or corrupt"),
        (_tiff(), UnsupportedImageFormat, "not supported"),
        (_png_declaring(70_000, 70_000), ImageTooLarge, "over the budget"),
    ],
)
def test_bad_images_are_refused_and_engine_survives(
    engine: EdgeEngine, data: bytes, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        engine.encode(Q, [data])
    ok = engine.encode(Q, [png_bytes(random_image(64, 64))])
    assert len(engine.generate(ok, SamplingParams(max_tokens=2, ignore_eos=True)).token_ids) == 2


def test_empty_and_overlong_prompts(engine: EdgeEngine) -> None:
    with pytest.raises(PromptError):
        engine.encode([], [])
    with pytest.raises(PromptError, match="over the limit"):
        engine.encode([{"role": "user", "content": "reading " * 5000}], [])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_file_is_reported(fp32_bundle: Path, tmp_path: Path) -> None:
    b = _copy(fp32_bundle, tmp_path / "b")
    (b / "vision.onnx").unlink()
    with pytest.raises(BundleError, match="missing vision.onnx"):
        EdgeEngine(b)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        EdgeEngine(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        EdgeEngine(tmp_path)


def test_truncated_weights_are_detected(fp32_bundle: Path, tmp_path: Path) -> None:
    b = _copy(fp32_bundle, tmp_path / "b")
    data = b / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-1000])
    with pytest.raises(BundleError, match="truncated or mixed"):
        EdgeEngine(b)


def test_tampered_file_fails_sha256_check(fp32_bundle: Path, tmp_path: Path) -> None:
    from edge_agent.engine.bundle import SessionConfig

    b = _copy(fp32_bundle, tmp_path / "b")
    raw = bytearray((b / "embedding.onnx").read_bytes())
    raw[-10] ^= 0xFF
    (b / "embedding.onnx").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256"):
        EdgeEngine(b, SessionConfig(verify="sha256"))


def test_files_from_another_model_are_refused(
    fp32_bundle: Path, bundle_factory: Callable, tmp_path: Path
) -> None:
    b = _copy(fp32_bundle, tmp_path / "b")
    cfg = json.loads((b / "config.json").read_text())
    cfg["text_config"]["hidden_size"] = 128  # a config that does not match the graphs
    (b / "config.json").write_text(json.dumps(cfg))
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"]["config.json"]["bytes"] = (b / "config.json").stat().st_size
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="hidden size"):
        EdgeEngine(b)


def test_corrupt_graph_is_a_bundle_error(fp32_bundle: Path, tmp_path: Path) -> None:
    from edge_agent.engine.bundle import SessionConfig

    b = _copy(fp32_bundle, tmp_path / "b")
    (b / "vision.onnx").write_bytes(b"not onnx" * 100)
    with pytest.raises(BundleError, match="cannot load vision.onnx"):
        EdgeEngine(b, SessionConfig(verify="none"))
