"""The batched decode step: one token for every slot, captured as a CUDA graph per span.

Two implementations of the same math, chosen by ``impl``:

* ``"fused"`` (default): the decoder layer written out over transformers' own weights, with
  q/k/v and gate/up each in one matrix product (the modules' weights become views into the
  fused matrices, so the prefill, which runs transformers' modules, shares the memory) and
  grouped-query attention that reads each KV head once (:func:`gqa_decode_attention`).
  At batch 1 a step is a chain of matrix-vector products bound by weight bytes; fewer, larger
  products run closer to the copy rate and launch fewer kernels.
* ``"transformers"``: transformers' decoder layers called as they are; kept as the reference
  the fused step is compared with (``benchmarks/tools/cloud_variants.py``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cloud_worker.engine.attention import gqa_decode_attention
from cloud_worker.engine.model import LoadedModel
from cloud_worker.engine.slot_cache import SlotCache

__all__ = ["DecodeStep"]

log = logging.getLogger("fleetvl.cloud")


class _FusedLayer:
    """One decoder layer's weights arranged for the decode step."""

    def __init__(self, layer: torch.nn.Module) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.ln1, self.ln2 = layer.input_layernorm, layer.post_attention_layernorm
        self.qkv_w = _fuse(attn.q_proj, attn.k_proj, attn.v_proj)
        self.qkv_b = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        self.splits = [attn.q_proj.out_features, attn.k_proj.out_features,
                       attn.v_proj.out_features]  # fmt: skip
        self.o_w = attn.o_proj.weight
        self.gate_up_w = _fuse(mlp.gate_proj, mlp.up_proj)
        self.down_w = mlp.down_proj.weight
        self.act = mlp.act_fn
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling


def _fuse(*linears: torch.nn.Linear) -> torch.Tensor:
    """Concatenate the linears' weights along the output dimension and make each module's
    weight a view of its rows, so the model holds one copy."""
    fused = torch.cat([lin.weight.detach() for lin in linears])
    at = 0
    for lin in linears:
        rows = lin.out_features
        lin.weight = torch.nn.Parameter(fused[at : at + rows], requires_grad=False)
        at += rows
    return fused


class DecodeStep:
    """One decode step for every slot: ``logits[s]`` for ``tokens[s]`` at ``positions[s]``.

    Inputs are written into static buffers (``tokens``, ``positions``, ``cache.write_pos``);
    the attended span is rounded up to ``bucket`` tokens so few graphs cover all lengths.
    """

    def __init__(
        self,
        lm: LoadedModel,
        cache: SlotCache,
        cuda_graphs: bool = True,
        bucket: int = 128,
        compile_step: bool | str = True,
        impl: str = "fused",
    ) -> None:
        if impl not in ("fused", "transformers"):
            raise ValueError(f"decode impl must be 'fused' or 'transformers', got {impl!r}")
        self.lm = lm
        self.cache = cache
        self.bucket = bucket
        self.impl = impl
        s = cache.slots
        dev = lm.device
        self.tokens = torch.zeros(s, dtype=torch.long, device=dev)
        self.positions = torch.zeros(s, dtype=torch.long, device=dev)
        self.logits = torch.zeros(s, lm.vocab_size, dtype=torch.float32, device=dev)
        self._arange = torch.arange(cache.capacity, device=dev)
        self.use_graphs = cuda_graphs and dev.type == "cuda"
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pool = None
        text = lm.language_model
        self._layers = [_FusedLayer(layer) for layer in text.layers] if impl == "fused" else []
        attn_module = sys.modules[type(text.layers[0].self_attn).__module__]
        self._rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]] = (
            attn_module.apply_rotary_pos_emb
        )
        # Profiled on an H100 (7B, batch 1): the matrix products ran near the bandwidth
        # bound but ~25 tiny element-wise kernels per layer (norms, rotary, residuals, the
        # cache write, activation) added ~2 ms a token. Inductor fuses them; the products
        # stay cuBLAS calls. Compiled once per span bucket, then captured as a CUDA graph.
        self._run = self._forward
        if compile_step and (dev.type == "cuda" or compile_step == "force"):
            # The span is dynamic after its first change: one recompile covers every bucket.
            self._run = torch.compile(self._forward)

    def span_for(self, max_len: int) -> int:
        b = self.bucket
        return min(self.cache.capacity, -(-max_len // b) * b)

    # no_grad, not inference_mode: Inductor cannot trace the static buffers as inference
    # tensors ("weakref to UntypedStorage" failures).
    @torch.no_grad()
    def _forward(self, span: int) -> None:
        lm = self.lm
        text = lm.language_model
        self.cache.span = span
        h = text.embed_tokens(self.tokens[:, None])
        pos = self.positions[None, :, None].expand(3, -1, 1)
        cos_sin = text.rotary_emb(h, pos)
        # Slot s attends to its own positions 0..write_pos[s] (the new token included).
        mask = (self._arange[None, :span] <= self.cache.write_pos[:, None])[:, None, None, :]
        if self._layers:
            for i, layer in enumerate(self._layers):
                h = self._fused_layer(i, layer, h, mask, cos_sin)
        else:
            for layer in text.layers:
                h = layer(h, attention_mask=mask, position_ids=pos,
                          past_key_values=self.cache, position_embeddings=cos_sin)  # fmt: skip
        h = text.norm(h)
        self.logits.copy_(lm.model.lm_head(h[:, 0]).float())

    def _fused_layer(
        self,
        i: int,
        w: _FusedLayer,
        h: torch.Tensor,
        mask: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        b = h.shape[0]
        d = w.head_dim
        qkv = F.linear(w.ln1(h), w.qkv_w, w.qkv_b)
        q, k, v = torch.split(qkv, w.splits, dim=-1)
        q = q.view(b, 1, -1, d).transpose(1, 2)
        k = k.view(b, 1, -1, d).transpose(1, 2)
        v = v.view(b, 1, -1, d).transpose(1, 2)
        q, k = self._rotary(q, k, *cos_sin)
        keys, values = self.cache.update(k, v, i)
        h = h + F.linear(gqa_decode_attention(q, keys, values, mask, w.scaling), w.o_w)
        gate, up = F.linear(w.ln2(h), w.gate_up_w).chunk(2, dim=-1)
        return h + F.linear(w.act(gate) * up, w.down_w)

    def __call__(self, span: int) -> torch.Tensor:
        if not self.use_graphs:
            self._run(span)
            return self.logits
        graph = self._graphs.get(span)
        if graph is None:
            graph = self._capture(span)
        graph.replay()
        return self.logits

    def warmup(self) -> None:
        """Compile and capture every span bucket now, not in the middle of serving."""
        if not self.use_graphs:
            return
        saved = self.cache.write_pos.clone()
        self.cache.write_pos.zero_()  # harmless writes at position 0 of each slot
        for span in range(self.bucket, self.cache.capacity + self.bucket, self.bucket):
            span = min(span, self.cache.capacity)
            if span not in self._graphs:
                self._capture(span)
        self.cache.write_pos.copy_(saved)

    def _capture(self, span: int) -> torch.cuda.CUDAGraph:
        log.info("capturing the decode step for span %d", span)
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # untyped in torch
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: compilation, allocator and kernel choices settle
                self._run(span)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._run(span)
        self._pool = graph.pool()
        self._graphs[span] = graph
        return graph
