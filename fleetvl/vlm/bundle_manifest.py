"""The edge bundle's manifest: what a bundle must contain and how its digest is checked.

Shared by the exporter (writes it), the edge engine (verifies it) and, later, the cache (uses
``bundle_digest`` as its namespace) and the controller (distributes bundles by digest).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NotRequired, TypedDict

from fleetvl.errors import BundleError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "REQUIRED_FILES",
    "DecoderFiles",
    "FileEntry",
    "Manifest",
    "QuantizationInfo",
    "file_sha256",
    "read_manifest",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_FILES = (
    "vision.onnx",
    "embedding.onnx",
    "model.onnx",
    "model.last.onnx",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
)


class FileEntry(TypedDict):
    """One file of the bundle, as the manifest lists it."""

    sha256: str
    bytes: int


class QuantizationInfo(TypedDict):
    """How the decoder's MatMulNBits weights were quantized (absent for fp32 bundles)."""

    block_size: int
    accuracy_level: int
    fused_gate_up: bool


class DecoderFiles(TypedDict):
    """The decoder graphs: onnxruntime-genai's and our engine's (LM head on the last position)."""

    genai: str
    engine: str


class Manifest(TypedDict):
    """``manifest.json``: what the exporter writes and the engine and controller read."""

    format_version: int
    architecture: str
    precision: str
    quantization: QuantizationInfo | None
    decoder: NotRequired[DecoderFiles]  # bundles from before model.last.onnx lack it
    files: dict[str, FileEntry]
    total_bytes: int
    bundle_digest: str


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle_dir: str | Path, *, verify: str = "size") -> Manifest:
    """Read and check a bundle's manifest.

    Args:
        verify: ``"size"`` checks that every listed file exists with its recorded size (fast,
            catches truncation and swaps of different size); ``"sha256"`` re-hashes every file
            (what an agent does after a download); ``"none"`` only parses.

    Raises:
        BundleError: missing directory, manifest, required file, or a file that does not match.
    """
    d = Path(bundle_dir)
    if not d.is_dir():
        raise BundleError(f"bundle directory {d} does not exist")
    try:
        manifest: Manifest = json.loads((d / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(
            f"{d} has no {MANIFEST}: not an edge bundle (run `fleetvl model export`)"
        ) from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{d / MANIFEST} is corrupt: {exc}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{d} has bundle format {manifest.get('format_version')!r}; this build reads "
            f"{FORMAT_VERSION}: re-export the bundle"
        )
    files = manifest.get("files", {})
    missing = [f for f in REQUIRED_FILES if not (d / f).exists()]
    if missing:
        raise BundleError(f"bundle {d} is missing {', '.join(missing)}")
    if verify == "none":
        return manifest
    for name, meta in files.items():
        path = d / name
        if not path.exists():
            raise BundleError(f"bundle {d} is missing {name}, listed in its manifest")
        if path.stat().st_size != meta["bytes"]:
            raise BundleError(
                f"{name} in {d} is {path.stat().st_size} bytes, the manifest says {meta['bytes']}: "
                "the bundle is truncated or mixed with another"
            )
        if verify == "sha256" and file_sha256(path) != meta["sha256"]:
            raise BundleError(f"{name} in {d} does not match its sha256 in the manifest")
    return manifest
