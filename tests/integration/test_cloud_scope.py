"""The cloud engine's out-of-scope score on the tiny checkpoint, fitted by the engine itself:
noise is refused at once (no tokens, no slot), rendered scenes of the calibrated kinds are
answered exactly as without the score, and a broken scope model stops the engine at start."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_worker.engine import CloudEngine, CloudResult, EngineConfig, write_scope
from fleetvl.errors import InputError
from fleetvl.sampling import SamplingParams
from fleetvl.vlm.calibration import CALIBRATION_FILE, SCOPE_FILE, load_calibration
from fleetvl.vlm.scope import ScopeModel
from tests.cloud_scope import CALIBRATION_IMAGES, TASKS, in_scope, noise_image, scoped_checkpoint
from tests.helpers import hf_inputs

NEW = 6


@pytest.fixture(scope="module")
def scoped_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scoped_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("scoped") / "model")


@pytest.fixture(scope="module")
def engine(scoped_dir: Path) -> Iterator[CloudEngine]:
    eng = CloudEngine(scoped_dir, EngineConfig(max_slots=4, max_context=512))
    yield eng
    eng.close()


def _ask(engine: CloudEngine, image: object, question: str):  # noqa: ANN202
    content = [{"type": "image"}, {"type": "text", "text": question}]
    return engine.encode([{"role": "user", "content": content}], [image])


def test_the_fitted_scope_model_is_stored_and_loaded(scoped_dir: Path, engine: CloudEngine) -> None:
    cal = load_calibration(scoped_dir)
    assert cal is not None
    assert cal.out_of_scope is not None
    summary = cal.out_of_scope
    assert summary.examples == CALIBRATION_IMAGES
    assert summary.classes == sorted({"gauge", "breaker", "thermal", "shelf"})
    assert 0 <= summary.cross_fitted_false_alarm <= 0.2
    assert engine.scope is not None
    assert engine.scope.classes == summary.classes
    assert len(TASKS) == len(summary.classes)


def test_noise_is_refused_and_scenes_are_answered_in_one_batch(engine: CloudEngine) -> None:
    scenes = in_scope(8)
    noise = _ask(engine, noise_image(), scenes[0].question)
    prompts = [noise, *(_ask(engine, s.image, s.question) for s in scenes)]
    refusals0 = engine.timings["out_of_scope"]
    params = SamplingParams(max_tokens=NEW, ignore_eos=True)
    results: list[CloudResult | None] = [None] * len(prompts)

    def run(i: int) -> None:
        results[i] = engine.generate(prompts[i], params)

    # Submitted together: the noise is prefilled in the same batch as scenes that go on.
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused, *answers = results
    assert refused is not None
    assert refused.finish_reason == "out_of_scope"
    assert refused.token_ids == []
    assert refused.text == ""
    assert refused.decode_steps == 0
    assert refused.scope is not None
    assert refused.scope.out_of_scope
    assert refused.scope.part == "camera"  # pure noise looks like no camera image at all
    assert engine.timings["out_of_scope"] >= refusals0 + 1
    answered = [(p, r) for p, r in zip(prompts[1:], answers, strict=True)
                if r is not None and r.finish_reason != "out_of_scope"]  # fmt: skip
    # The score flags ~1% of new in-scope images; fitted on 48, allow one or two.
    assert len(answered) >= 6, [r.scope for r in answers if r is not None]
    for prompt, r in answered:
        assert r.scope is not None
        assert not r.scope.out_of_scope
        assert r.scope.score < r.scope.threshold
        # Scoring changes nothing about an answer: transformers' own generate() agrees.
        kw = hf_inputs(prompt, engine.lm.image_token_id)
        want = engine.lm.model.generate(**kw, max_new_tokens=NEW, min_new_tokens=NEW,
                                        do_sample=False)  # fmt: skip
        assert r.token_ids == want[0, len(prompt) :].tolist()
    assert engine.running == 0


def test_requests_without_images_are_not_scored(engine: CloudEngine) -> None:
    prompt = engine.encode([{"role": "user", "content": "What does gauge 3 read?"}])
    r = engine.generate(prompt, SamplingParams(max_tokens=3, ignore_eos=True))
    assert r.finish_reason == "length"
    assert r.scope is None
    assert r.scope_inputs == []


def test_a_model_without_calibration_scores_nothing(tiny_checkpoint: Path) -> None:
    eng = CloudEngine(tiny_checkpoint, EngineConfig(max_slots=1, max_context=512))
    try:
        assert eng.scope is None
        r = eng.generate(_ask(eng, noise_image(), "What does the gauge read?"),
                         SamplingParams(max_tokens=2, ignore_eos=True))  # fmt: skip
        assert r.finish_reason == "length"
        assert r.scope is None
        assert len(r.scope_inputs) == 1  # computed anyway, for fitting one
    finally:
        eng.close()


def test_a_broken_scope_model_stops_the_engine_at_start(scoped_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "model"
    shutil.copytree(scoped_dir, d)
    with (d / SCOPE_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match="does not match the sha256"):
        CloudEngine(d, EngineConfig(max_slots=1, max_context=512))
    (d / SCOPE_FILE).unlink()
    with pytest.raises(InputError, match="is missing"):
        CloudEngine(d, EngineConfig(max_slots=1, max_context=512))
    (d / CALIBRATION_FILE).write_text('{"out_of_scope": 3}')
    with pytest.raises(InputError, match="not a valid calibration"):
        CloudEngine(d, EngineConfig(max_slots=1, max_context=512))


def test_a_scope_model_of_another_model_is_refused_at_start(
    scoped_dir: Path, tmp_path: Path
) -> None:
    d = tmp_path / "model"
    shutil.copytree(scoped_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    text["hidden_size"] *= 2  # as if the scope model had been fitted on another model
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="belongs to another model"):
        CloudEngine(d, EngineConfig(max_slots=1, max_context=512))


def test_the_engine_imports_no_pydantic_without_a_calibration() -> None:
    """The GPU benchmark box has torch and transformers, not the service stack."""
    import subprocess
    import sys

    from cloud_worker.engine import scope

    code = "import sys, cloud_worker.engine; assert 'pydantic' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (scope.CALIBRATION_FILE, scope.SCOPE_FILE) == (CALIBRATION_FILE, SCOPE_FILE)


def test_write_scope_keeps_the_rest_of_a_calibration(scoped_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "model"
    shutil.copytree(scoped_dir, d)
    cal = load_calibration(d)
    assert cal is not None
    cal.model_copy(update={"base_accuracy": 0.75}).save(d / CALIBRATION_FILE)
    model = ScopeModel.load(d / SCOPE_FILE)
    written = write_scope(d, model, "ab" * 32, 12)
    again = load_calibration(d)
    assert again == written
    assert again is not None
    assert again.base_accuracy == 0.75
    assert again.out_of_scope is not None
    assert again.out_of_scope.fitted_on_sha256 == "ab" * 32
