"""Export the token embedding + image-feature merge as its own ONNX model.

``inputs_embeds = embed(input_ids)``, with the rows at image placeholder positions replaced,
in order, by ``image_features`` (the vision encoder's output). A prompt without images passes
an empty ``[0, hidden]`` tensor. This is onnxruntime-genai's embedding contract for
multimodal models; the decoder never sees token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["export_embedding"]


def export_embedding(
    model: PreTrainedModel,
    out_path: str | Path,
    *,
    image_token_id: int,
    weight_dtype: str = "float32",
    opset: int = 17,
) -> Path:
    """Export the embedding of a loaded Qwen-VL model.

    Args:
        weight_dtype: ``float32``, or ``float16`` to halve the table for quantized bundles
            (the lookup result is cast back to float32).
    """
    import torch
    from torch import nn

    weight = model.get_input_embeddings().weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"the input embedding of {type(model).__name__} has no weight tensor")
    table = weight.detach().float()
    store = table.half() if weight_dtype == "float16" else table

    class EmbeddingForExport(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(store, requires_grad=False)

        def forward(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
            emb = self.weight[input_ids].float()
            is_image = input_ids == image_token_id
            # Index of each placeholder's feature row; non-image positions point at a zero
            # row appended at the end, so an empty feature tensor is still a valid gather.
            order = torch.cumsum(is_image.reshape(-1).to(torch.int64), 0) - 1
            n = image_features.shape[0]
            order = torch.where(is_image.reshape(-1), order, torch.full_like(order, n))
            feats = torch.cat([image_features, image_features.new_zeros(1, emb.shape[-1])], 0)
            picked = feats[order].reshape(emb.shape)
            return torch.where(is_image.unsqueeze(-1), picked, emb)

    hidden = table.shape[1]
    ids = torch.tensor([[1, image_token_id, image_token_id, 2]], dtype=torch.int64)
    feats = torch.randn(2, hidden)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            EmbeddingForExport().eval(),
            (ids, feats),
            str(out),
            input_names=["input_ids", "image_features"],
            output_names=["inputs_embeds"],
            dynamic_axes={
                "input_ids": {0: "batch_size", 1: "sequence_length"},
                "image_features": {0: "num_image_tokens"},
                "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
            },
            opset_version=opset,
            dynamo=False,
            external_data=False,
        )
    return out
