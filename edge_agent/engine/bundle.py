"""Open an edge bundle: manifest check, processor, and the three ONNX Runtime sessions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from fleetvl.errors import BundleError
from fleetvl.vlm.bundle_manifest import read_manifest
from fleetvl.vlm.processor import QwenVLProcessor

__all__ = ["EdgeBundle", "SessionConfig"]


@dataclass(frozen=True)
class SessionConfig:
    """ONNX Runtime knobs for the site box."""

    intra_op_threads: int = 0  # 0 = one per core
    verify: str = "size"  # manifest check: none | size | sha256
    max_context: int = 4096  # KV arena length: prompt + answer, tokens


@dataclass(frozen=True)
class DecoderShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int


def _session(path: Path, opts: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BundleError(f"cannot load {path.name} from {path.parent}: {exc}") from None


class EdgeBundle:
    """A loaded bundle. Cheap to query; the sessions hold the weights."""

    def __init__(self, bundle_dir: str | Path, config: SessionConfig | None = None) -> None:
        self.dir = Path(bundle_dir)
        self.config = config or SessionConfig()
        self.manifest = read_manifest(self.dir, verify=self.config.verify)
        self.digest: str = self.manifest["bundle_digest"]
        self.precision: str = self.manifest["precision"]
        self.processor = QwenVLProcessor(self.dir, max_prompt_tokens=self.config.max_context - 1)
        cfg = json.loads((self.dir / "config.json").read_text())
        self.hf_config = cfg
        text = cfg.get("text_config", cfg)
        vision = cfg["vision_config"]
        self.spatial_merge_size: int = vision.get("spatial_merge_size", 2)
        heads = text["num_attention_heads"]
        self.shape = DecoderShape(
            num_layers=text["num_hidden_layers"],
            num_kv_heads=text["num_key_value_heads"],
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            hidden_size=text["hidden_size"],
            vocab_size=text["vocab_size"],
        )
        decoder_file = self.manifest.get("decoder", {}).get("engine", "model.last.onnx")
        self.vision = _session(self.dir / "vision.onnx", self._options(aux=True))
        self.embedding = _session(self.dir / "embedding.onnx", self._options(aux=True, threads=1))
        self.decoder = _session(self.dir / decoder_file, self._options(aux=False))
        self._check_decoder()

    def _options(self, aux: bool, threads: int | None = None) -> ort.SessionOptions:
        """Session options; the decoder's pool spins, the others' do not.

        Each session has its own intra-op pool. A pool that spins after its run keeps its
        threads busy-waiting for a while, and on a 2-core site box the embedding's or vision
        encoder's spinning threads then steal the cores the decoder step that follows needs
        (measured: ~3% of decode speed). The embedding gather is too small to split.
        """
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.inter_op_num_threads = 1
        n = threads or self.config.intra_op_threads
        if n:
            opts.intra_op_num_threads = n
        if aux:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def _check_decoder(self) -> None:
        names = {i.name for i in self.decoder.get_inputs()}
        need = {"inputs_embeds", "attention_mask", "position_ids"}
        need |= {f"past_key_values.{i}.key" for i in range(self.shape.num_layers)}
        if missing := need - names:
            raise BundleError(
                f"decoder in {self.dir} does not match config.json: "
                f"missing inputs {sorted(missing)}"
            )
        emb = next(i for i in self.decoder.get_inputs() if i.name == "inputs_embeds")
        if emb.shape[-1] != self.shape.hidden_size:
            raise BundleError(
                f"decoder hidden size {emb.shape[-1]} != config.json's {self.shape.hidden_size}: "
                "the bundle mixes files of different models"
            )
