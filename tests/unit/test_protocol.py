"""The committed gRPC stubs match the proto (regenerate: python -m fleetvl.protocol.generate)."""

from __future__ import annotations

from pathlib import Path

from fleetvl.protocol.generate import ROOT, generate


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc produced nothing"
    for f in fresh:
        committed = ROOT / "fleetvl" / "protocol" / f.name
        assert committed.exists(), f"{f.name} is not committed"
        assert committed.read_text() == f.read_text(), (
            f"{f.name} is stale: run `python -m fleetvl.protocol.generate`"
        )


def test_sla_headers_merge_under_the_body_and_name_the_bad_header() -> None:
    import pytest

    from fleetvl.policy import PolicyOverride
    from fleetvl.protocol.openai_api import SlaHeaderError, request_sla

    body = PolicyOverride.model_validate({"deadline_ms": 900})
    got = request_sla(body, {"x-fleetvl-deadline-ms": "5000", "x-fleetvl-priority": "critical"})
    assert got is not None
    assert got.deadline_ms == 900  # the body wins where both say
    assert got.priority == "critical"
    assert request_sla(body, {}) is body
    with pytest.raises(SlaHeaderError) as err:
        request_sla(None, {"x-fleetvl-min-confidence": "very"})
    assert [d["field"] for d in err.value.details] == ["x-fleetvl-min-confidence"]


def test_a_peer_failure_shows_its_code_and_never_its_internals() -> None:
    """A Ray replica's death reaches the router as UNAVAILABLE with the actor id, pid and
    address in its details; a caller sees the code only. Its own request's fault is named."""
    import grpc

    from fleetvl.protocol.grpc_status import public_detail

    ray_says = "ActorDiedError: actor 9f2c1e pid=4211 ip=10.0.3.17 died unexpectedly"
    assert public_detail(grpc.StatusCode.UNAVAILABLE, ray_says) == "UNAVAILABLE"
    trace = "Traceback (most recent call last)"
    assert public_detail(grpc.StatusCode.INTERNAL, trace) == "INTERNAL"
    bad = "at most 8 images per request, got 12"
    assert public_detail(grpc.StatusCode.INVALID_ARGUMENT, bad) == f"INVALID_ARGUMENT: {bad}"
