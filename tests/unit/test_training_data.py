"""Training inputs: on-device patchify equals the engines' preprocessing; labels cover answers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (export extra)")

from fleetvl.vlm.image import ImageConfig, preprocess  # noqa: E402
from fleetvl_tools.fleetdata import generate  # noqa: E402
from fleetvl_tools.training.data import IGNORE, patchify  # noqa: E402


def test_patchify_matches_preprocess() -> None:
    cfg = ImageConfig(min_pixels=168 * 168, max_pixels=168 * 168)
    samples = list(generate("val", 3))
    imgs = np.stack([np.asarray(s.image) for s in samples])
    got = patchify(torch.from_numpy(imgs), cfg).numpy()
    want = np.concatenate([preprocess(s.image, cfg).pixel_values for s in samples])
    assert got.shape == want.shape == (3 * 144, 1176)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_labels_are_the_answer_and_end_token_only(tmp_path) -> None:
    from fleetvl.vlm.processor import QwenVLProcessor
    from fleetvl_tools.checkpoint import build_checkpoint
    from fleetvl_tools.presets import get_preset
    from fleetvl_tools.training.data import build_set

    build_checkpoint(get_preset("fleet-edge"), tmp_path, progress=lambda _m: None)
    data = build_set(tmp_path, "val", 8, workers=1, progress=lambda _m: None)
    proc = QwenVLProcessor(tmp_path)
    for seq, answer in zip(data.seqs, data.answers, strict=True):
        ans_ids = seq.labels[seq.labels != IGNORE]
        assert proc.decode(ans_ids[:-1]) == answer
        assert ans_ids[-1] == proc.tokenizer.token_to_id("<|im_end|>")
        # Answers tokenize compactly: the tokenizer learned the fleet vocabulary.
        assert len(ans_ids) <= 4
        assert (seq.input_ids == proc.image_token_id).sum() == 36
