"""Engine behaviour a caller relies on: streaming, stops, sampling, cancellation, early stop,
KV prefixes, and the hidden state exposed for confidence probes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.engine.engine import EdgeEngine
from edge_agent.engine.types import CancelToken
from fleetvl.errors import InputError, PromptError
from fleetvl.sampling import SamplingParams
from tests.helpers import png_bytes, random_image


@pytest.fixture(scope="module")
def engine(fp32_bundle: Path) -> EdgeEngine:
    return EdgeEngine(fp32_bundle)


def _prompt(engine: EdgeEngine, question: str = "What does the gauge read?", n_images: int = 1):
    images = [png_bytes(random_image(140, 180, seed=i)) for i in range(n_images)]
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    return engine.encode([{"role": "user", "content": content}], images)


def test_stream_yields_each_token_and_matches_result(engine: EdgeEngine) -> None:
    gen = engine.stream(_prompt(engine), SamplingParams(max_tokens=10, ignore_eos=True))
    events = list(gen)
    assert gen.result is not None
    assert [e.token_id for e in events] == gen.result.token_ids
    assert "".join(e.text for e in events) == gen.result.text
    assert [e.index for e in events] == list(range(10))
    assert gen.result.finish_reason == "length"
    assert all(e.confidence is not None and 0 < e.confidence.prob <= 1 for e in events)
    t = gen.result.timings
    assert t.generated_tokens == 10
    assert t.ttft_s > 0
    assert t.decode_tokens_per_s > 0


def test_max_tokens_and_confidence_summary(engine: EdgeEngine) -> None:
    res = engine.generate(_prompt(engine), SamplingParams(max_tokens=5, ignore_eos=True))
    assert len(res.token_ids) == 5
    assert res.confidence.num_tokens == 5
    assert res.confidence.min_prob == min(t.prob for t in res.tokens)
    assert res.last_hidden is not None
    assert res.last_hidden.shape == (engine.bundle.shape.hidden_size,)


def test_stop_sequence_truncates_output(engine: EdgeEngine) -> None:
    full = engine.generate(_prompt(engine), SamplingParams(max_tokens=12, ignore_eos=True))
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    assert stop.strip(), "the tiny model's answer should contain printable text"
    res = engine.generate(
        _prompt(engine), SamplingParams(max_tokens=12, ignore_eos=True, stop=(stop,))
    )
    assert res.finish_reason == "stop"
    assert stop not in res.text
    assert full.text.startswith(res.text)
    assert len(res.token_ids) < len(full.token_ids)


def test_eos_ends_generation(engine: EdgeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    first = engine.generate(_prompt(engine), SamplingParams(max_tokens=4, ignore_eos=True))
    # Declare the model's second token an end-of-sequence token: decoding must stop there.
    monkeypatch.setattr(engine.processor, "eos_token_ids", (first.token_ids[1],))
    res = engine.generate(_prompt(engine), SamplingParams(max_tokens=4))
    assert res.finish_reason == "stop"
    assert res.token_ids == first.token_ids[:1]


def test_seeded_sampling_is_reproducible(engine: EdgeEngine) -> None:
    p = SamplingParams(max_tokens=8, temperature=1.2, top_p=0.9, top_k=50, seed=11, ignore_eos=True)
    a = engine.generate(_prompt(engine), p).token_ids
    b = engine.generate(_prompt(engine), p).token_ids
    greedy = engine.generate(
        _prompt(engine), SamplingParams(max_tokens=8, ignore_eos=True)
    ).token_ids
    assert a == b
    assert a != greedy


def test_cancellation_stops_between_steps(engine: EdgeEngine) -> None:
    cancel = CancelToken()
    gen = engine.stream(
        _prompt(engine), SamplingParams(max_tokens=50, ignore_eos=True), cancel=cancel
    )
    for seen, _event in enumerate(gen, start=1):
        if seen == 3:
            cancel.cancel()
    assert gen.result is not None
    assert gen.result.finish_reason == "cancelled"
    assert len(gen.result.token_ids) == 3
    # The engine is usable right after a cancelled request.
    assert (
        len(
            engine.generate(
                _prompt(engine), SamplingParams(max_tokens=2, ignore_eos=True)
            ).token_ids
        )
        == 2
    )


def test_early_stop_predicate_ends_decoding(engine: EdgeEngine) -> None:
    res = engine.generate(
        _prompt(engine),
        SamplingParams(max_tokens=40, ignore_eos=True),
        stop_when=lambda tr: len(tr) >= 4 and tr.mean_logprob < 0.0,
    )
    assert res.finish_reason == "low_confidence"
    assert len(res.token_ids) == 4


def test_kv_prefix_reuse_gives_identical_output(engine: EdgeEngine) -> None:
    prompt = _prompt(engine, n_images=2)
    # Cache everything up to the end of the second image's placeholder run.
    img = np.flatnonzero(prompt.input_ids == engine.processor.image_token_id)
    cut = int(img[-1]) + 1
    cold = engine.generate(
        prompt, SamplingParams(max_tokens=10, ignore_eos=True), capture_prefix=cut
    )
    assert cold.prefix is not None
    assert cold.prefix.num_tokens == cut
    warm = engine.generate(
        prompt, SamplingParams(max_tokens=10, ignore_eos=True), prefix=cold.prefix
    )
    assert warm.token_ids == cold.token_ids
    assert warm.timings.cached_tokens == cut
    assert warm.timings.vision_s < cold.timings.vision_s
    # A prefix may end inside an image (cache blocks ignore image bounds): that image is
    # still encoded and only its remaining rows are prefilled.
    mid = engine.generate(
        prompt, SamplingParams(max_tokens=2), capture_prefix=int(img[0]) + 3
    ).prefix
    cut_mid = engine.generate(prompt, SamplingParams(max_tokens=10, ignore_eos=True), prefix=mid)
    assert cut_mid.token_ids == cold.token_ids
    assert cut_mid.timings.cached_tokens == int(img[0]) + 3


def test_given_image_features_skip_the_encoder(engine: EdgeEngine) -> None:
    prompt = _prompt(engine, n_images=2)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    cold = engine.generate(prompt, params)
    assert sorted(cold.image_features) == [0, 1]
    assert cold.timings.vision_tokens == sum(e - s for s, e in engine.image_spans(prompt))
    warm = engine.generate(prompt, params, image_features={1: cold.image_features[1]})
    assert warm.token_ids == cold.token_ids
    assert sorted(warm.image_features) == [0]
    with pytest.raises(InputError, match="features given for image 0"):
        engine.generate(prompt, params, image_features={0: cold.image_features[1][:1]})


def test_context_overflow_is_a_prompt_error(engine: EdgeEngine) -> None:
    prompt = _prompt(engine)
    with pytest.raises(PromptError, match="exceeds the engine's context"):
        engine.generate(prompt, SamplingParams(max_tokens=engine.bundle.config.max_context))
