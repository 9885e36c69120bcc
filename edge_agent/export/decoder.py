"""Build the text decoder with onnxruntime-genai's model builder, then derive our variant.

The builder gives the fastest CPU decoder we know of (GroupQueryAttention, fused
MRotaryEmbedding, MatMulNBits INT4/INT8 with ``accuracy_level``). Its graph computes logits for
every prompt position, which onnxruntime-genai needs and which wastes ~a quarter of the prefill
FLOPs on a 0.5B model with a 152k vocabulary. We keep its ``model.onnx`` untouched (so the
bundle still runs under onnxruntime-genai) and write ``model.last.onnx``: the same graph with
the LM head applied to the last position only, sharing the same external weights file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

__all__ = ["DECODER_LAST", "build_decoder", "write_last_position_variant"]

log = logging.getLogger(__name__)

DECODER_LAST = "model.last.onnx"
# onnxruntime 1.31 rejects IR 14 (what onnx 1.23 writes by default); 10 is what the builder
# itself emits and every runtime we ship accepts.
MAX_IR_VERSION = 10


def _builder_view_of(hf_dir: Path, work: Path) -> Path:
    """A directory the builder accepts for this checkpoint.

    The builder knows Qwen2.5-VL but not Qwen2-VL. Their text towers are the same Qwen2
    decoder with MRoPE (same weight names in transformers 5), so a Qwen2-VL checkpoint is
    handed over with its config relabelled; the parity tests prove the decoder identical.
    """
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("architectures", [""])[0] == "Qwen2_5_VLForConditionalGeneration":
        return hf_dir
    view = work / "qwen2_5_view"
    view.mkdir(parents=True, exist_ok=True)
    for f in hf_dir.iterdir():
        if f.name != "config.json":
            os.symlink(f.resolve(), view / f.name)
    cfg["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    cfg["model_type"] = "qwen2_5_vl"
    if "text_config" in cfg:
        cfg["text_config"]["model_type"] = "qwen2_5_vl_text"
    vc = cfg.get("vision_config", {})
    # Only the text tower is read; give the vision config the fields its class requires.
    cfg["vision_config"] = {
        "depth": vc.get("depth", 1),
        "hidden_size": vc.get("embed_dim", 32),
        "num_heads": vc.get("num_heads", 1),
        "out_hidden_size": vc.get("hidden_size", cfg.get("text_config", {}).get("hidden_size")),
        "fullatt_block_indexes": [0],
        "model_type": "qwen2_5_vl_vision",
    }
    (view / "config.json").write_text(json.dumps(cfg, indent=2))
    return view


def build_decoder(
    hf_dir: str | Path,
    out_dir: str | Path,
    precision: str,
    *,
    accuracy_level: int = 4,
    block_size: int = 128,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Run the onnxruntime-genai builder for ``precision`` into ``out_dir``; return the model.

    Args:
        precision: ``fp32``, ``int8`` or ``int4`` (MatMulNBits); the builder offers no fp16 on
            CPU.
        accuracy_level: MatMulNBits compute type; 4 = int8 activations, the fast CPU path.
        block_size: quantization block along K. 128, not the builder's 32: a scale per 128
            weights is 1/4 of the scale bytes to read and dequantize per token; on the
            edge-bench model INT4 decode went from 57% to 64% of the bandwidth bound with
            identical greedy tokens (measured in benchmarks/README.md).
    """
    hf = Path(hf_dir).resolve()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    extra = [
        "exclude_embeds=true",
        "include_hidden_states=true",
        # One MatMulNBits for gate and up instead of two: 24 fewer kernel launches and thread
        # pool hand-offs per decode step on CPU, identical greedy tokens (measured).
        "fuse_mlp_gate_up=true",
    ]
    if precision in ("int4", "int8"):
        # 0.18 reads these names; the documented int4_* aliases are silently ignored there.
        extra += [f"accuracy_level={accuracy_level}", f"block_size={block_size}"]
    builder_precision = {"fp32": "fp32", "int8": "int8", "int4": "int4"}.get(precision)
    if builder_precision is None:
        raise ValueError(f"decoder precision {precision!r} is not supported on CPU")
    with tempfile.TemporaryDirectory(prefix="fleetvl-builder-") as tmp:
        src = _builder_view_of(hf, Path(tmp))
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(src),
            "-o",
            str(out),
            "-p",
            builder_precision,
            "-e",
            "cpu",
            "-c",
            str(Path(tmp) / "cache"),
            "--extra_options",
            *extra,
        ]
        log.info("running %s", " ".join(cmd))
        _run_builder(cmd, progress)
    model = out / "model.onnx"
    _cap_ir_version(model)
    write_last_position_variant(model, out / DECODER_LAST)
    # The builder copies tokenizer files next to the model; the bundle keeps its own copies.
    for extra_file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (out / extra_file).unlink(missing_ok=True)
    return model


def _run_builder(cmd: list[str], progress: Callable[[str], None] | None) -> None:
    """Run the builder, relaying its per-layer progress; raise with its output's tail."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    tail: deque[str] = deque(maxlen=40)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
        if progress and line.startswith(("Reading layer", "Reading final", "Saving ONNX")):
            progress("      builder: " + line.strip())
    if proc.wait() != 0:
        raise RuntimeError(
            f"onnxruntime-genai builder failed ({proc.returncode}):\n" + "\n".join(tail)
        )


def _cap_ir_version(path: Path) -> None:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    if m.ir_version > MAX_IR_VERSION:
        m.ir_version = MAX_IR_VERSION
        onnx.save(m, str(path))


def write_last_position_variant(model_path: Path, out_path: Path) -> None:
    """Write a copy of the decoder whose LM head sees only the last position.

    Every consumer of the final norm's output except the ``hidden_states`` graph output gets
    a ``Slice(axis=1, -1:)`` of it instead, so prefill computes one row of logits. Weights stay
    in the original external data file (the copy references it by relative path).
    """
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(model_path), load_external_data=False)
    g = m.graph
    hidden = next((o for o in g.output if o.name == "hidden_states"), None)
    if hidden is None:
        raise RuntimeError("decoder has no hidden_states output; build with include_hidden_states")
    # The graph output may be produced directly by the final norm or through an Identity.
    producer = {out: n for n in g.node for out in n.output}
    src = hidden.name
    while producer.get(src) is not None and producer[src].op_type == "Identity":
        src = producer[src].input[0]
    consumers = [n for n in g.node if src in n.input and n.op_type != "Identity"]
    if not consumers:
        raise RuntimeError("could not find the LM head behind the final norm")
    last = f"{src}_last_position"
    consts = [
        helper.make_tensor(f"{last}_{k}", TensorProto.INT64, [1], [v])
        for k, v in (("starts", -1), ("ends", 2**62), ("axes", 1))
    ]
    g.initializer.extend(consts)
    slice_node = helper.make_node(
        "Slice", [src, *(c.name for c in consts)], [last], name="/fleetvl/last_position"
    )
    for n in consumers:
        for i, name in enumerate(n.input):
            if name == src:
                n.input[i] = last
    g.node.insert(list(g.node).index(consumers[0]), slice_node)
    for o in g.output:
        if o.name == "logits":
            o.type.tensor_type.shape.dim[1].dim_value = 1
    onnx.save(m, str(out_path))
    if out_path.parent != model_path.parent:
        shutil.copy(model_path.with_suffix(".onnx.data"), out_path.parent)
