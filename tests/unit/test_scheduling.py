"""Deadline-aware scheduling on a fake clock: ordering, admission, expiry, cancel, learning."""

from __future__ import annotations

import numpy as np
import pytest

from fleetvl.policy import Priority, SlaPolicy
from fleetvl.scheduling import (
    AdmissionRejected,
    BackendSpec,
    CancelOutcome,
    Edf,
    Fifo,
    ItemState,
    LatencyPredictor,
    LeastSlack,
    ObservedTimings,
    Ordering,
    PredictorConfig,
    RejectReason,
    Scheduler,
    SchedulerConfig,
    WorkItem,
    item_from_policy,
)

CRIT, STD, BATCH = Priority.CRITICAL, Priority.STANDARD, Priority.BATCH


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# Predictions stay at these priors until a timing is observed: service = prompt_tokens / 1000 s.
# warmup 0: these backends count as warm, so admission trusts the numbers.
FIXED = PredictorConfig(
    ttft_base_s=0.0,
    ttft_s_per_prompt_token=0.001,
    ttft_s_per_image_token=0.0,
    decode_s_per_token=0.0,
    warmup_observations=0,
)


def backend(name: str = "a", slots: int = 1, cfg: PredictorConfig = FIXED) -> BackendSpec:
    return BackendSpec(name=name, slots=slots, predictor=cfg)


def make(
    clock: FakeClock,
    *backends: BackendSpec,
    ordering: Ordering | None = None,
    **config: object,
) -> Scheduler:
    cfg = SchedulerConfig(**{"admission_margin": 0.0, **config})
    return Scheduler(list(backends) or [backend()], clock, ordering, cfg)


def item(
    clock: FakeClock,
    item_id: str,
    due_in: float,
    prio: Priority = STD,
    service_s: float = 1.0,
    eligible: tuple[str, ...] = ("a",),
) -> WorkItem:
    return WorkItem(
        id=item_id,
        eligible=frozenset(eligible),
        priority=prio,
        arrival=clock.t,
        deadline=clock.t + due_in,
        prompt_tokens=int(service_s * 1000),
        max_output_tokens=1,
    )


def drain(s: Scheduler, name: str = "a") -> list[str]:
    """Dispatch order on one backend, completing each item at once."""
    order = []
    while (it := s.next_for(name)) is not None:
        order.append(it.id)
        s.complete(it)
    return order


# -- ordering ---------------------------------------------------------------------------


def test_edf_serves_priority_classes_first_then_earliest_deadline() -> None:
    clock = FakeClock()
    s = make(clock, admission=False)
    for iid, due, prio in [
        ("batch-soon", 5, BATCH),
        ("std-late", 30, STD),
        ("std-soon", 10, STD),
        ("crit-late", 50, CRIT),
    ]:
        assert s.admit(item(clock, iid, due, prio)).accepted
    assert drain(s) == ["crit-late", "std-soon", "std-late", "batch-soon"]


def test_fifo_keeps_arrival_order_within_a_class() -> None:
    clock = FakeClock()
    s = make(clock, ordering=Fifo(), admission=False)
    for iid, due in [("first", 30), ("second", 10), ("third", 20)]:
        s.admit(item(clock, iid, due))
        clock.t += 0.001
    assert drain(s) == ["first", "second", "third"]


def test_least_slack_runs_a_long_job_before_a_short_one_due_slightly_earlier() -> None:
    clock = FakeClock()
    s = make(clock, ordering=LeastSlack(), admission=False)
    s.admit(item(clock, "short", 9.9, service_s=0.1))  # slack 9.8 s
    s.admit(item(clock, "long", 10.0, service_s=5.0))  # slack 5.0 s
    assert drain(s) == ["long", "short"]
    s = make(clock, ordering=Edf(), admission=False)
    s.admit(item(clock, "short", 9.9, service_s=0.1))
    s.admit(item(clock, "long", 10.0, service_s=5.0))
    assert drain(s) == ["short", "long"]


def test_no_dispatch_beyond_the_backends_slots() -> None:
    clock = FakeClock()
    s = make(clock, backend("a", slots=2))
    for i in range(3):
        s.admit(item(clock, f"r{i}", 60))
    first, second = s.next_for("a"), s.next_for("a")
    assert first is not None
    assert second is not None
    assert s.next_for("a") is None  # both slots busy
    s.complete(first)
    third = s.next_for("a")
    assert third is not None
    assert third.id == "r2"


# -- admission --------------------------------------------------------------------------


def test_admission_picks_the_backend_that_finishes_first() -> None:
    clock = FakeClock()
    s = make(clock, backend("busy"), backend("slow", cfg=FIXED.model_copy(update={
        "ttft_s_per_prompt_token": 0.002})))  # fmt: skip
    s.admit(item(clock, "hog", 60, service_s=3.0, eligible=("busy",)))
    s.next_for("busy")  # running until t+3
    d = s.admit(item(clock, "x", 10, eligible=("busy", "slow")))
    assert d.accepted
    assert d.backend == "slow"
    assert d.predicted_s == pytest.approx(2.0)
    assert {e.backend: e.completion_s for e in d.estimates} == pytest.approx(
        {"busy": 4.0, "slow": 2.0}
    )


def test_unmeetable_deadline_is_rejected_with_predicted_allowed_and_retry_after() -> None:
    clock = FakeClock()
    s = make(clock)
    s.admit(item(clock, "running", 60, service_s=4.0))
    s.next_for("a")
    d = s.admit(item(clock, "late", 3.0, service_s=1.0))
    assert not d.accepted
    assert d.reason is RejectReason.DEADLINE_UNMEETABLE
    assert d.predicted_s == pytest.approx(5.0)
    assert d.allowed_s == pytest.approx(3.0)
    assert d.retry_after_s == pytest.approx(2.0)  # the backlog must drain by the overshoot
    assert s.queued("a") == []  # rejected work is not kept
    with pytest.raises(AdmissionRejected) as exc:
        d.raise_if_rejected()
    assert exc.value.reason is RejectReason.DEADLINE_UNMEETABLE


def test_a_deadline_no_idle_backend_can_meet_suggests_no_retry() -> None:
    clock = FakeClock()
    s = make(clock, admission_margin=0.0)
    d = s.admit(item(clock, "too-big", 1.0, service_s=2.0))
    assert d.reason is RejectReason.DEADLINE_UNMEETABLE
    assert d.retry_after_s is None


def test_admission_margin_asks_for_headroom() -> None:
    clock = FakeClock()
    s = Scheduler([backend()], clock, config=SchedulerConfig(admission_margin=0.2))
    assert not s.admit(item(clock, "tight", 1.1, service_s=1.0)).accepted
    assert s.admit(item(clock, "roomy", 1.3, service_s=1.0)).accepted


def test_item_that_would_make_admitted_work_late_is_overloaded() -> None:
    clock = FakeClock()
    s = make(clock)
    assert s.admit(item(clock, "admitted", 2.0, service_s=1.5)).accepted
    # Earlier deadline: EDF would run it first and push "admitted" to 2.5 s, past its 2 s.
    d = s.admit(item(clock, "pushy", 1.5, service_s=1.0))
    assert not d.accepted
    assert d.reason is RejectReason.OVERLOADED
    assert d.retry_after_s == pytest.approx(0.5)
    # A critical item may displace a batch one: classes below it were never promised.
    s = make(clock)
    assert s.admit(item(clock, "bulk", 2.0, BATCH, service_s=1.5)).accepted
    assert s.admit(item(clock, "alarm", 1.5, CRIT, service_s=1.0)).accepted
    assert drain(s) == ["alarm", "bulk"]


def test_queue_full_and_unknown_backends() -> None:
    clock = FakeClock()
    s = make(clock, max_queue=2, admission=False)
    assert all(s.admit(item(clock, f"q{i}", 60)).accepted for i in range(2))
    d = s.admit(item(clock, "third", 60))
    assert d.reason is RejectReason.QUEUE_FULL
    assert d.retry_after_s is not None
    d = s.admit(item(clock, "edge", 60, eligible=("site-17-agent",)))
    assert d.reason is RejectReason.NO_ELIGIBLE_BACKEND
    with pytest.raises(ValueError, match="already scheduled"):
        s.admit(item(clock, "q0", 60))


def test_without_admission_hopeless_work_is_accepted() -> None:
    # The FIFO/EDF baselines of the benchmark: admit everything, find out later.
    clock = FakeClock()
    s = make(clock, admission=False)
    d = s.admit(item(clock, "hopeless", 0.5, service_s=1.0))
    assert d.accepted
    assert d.predicted_s is not None
    assert d.predicted_s > d.allowed_s


# -- expiry -----------------------------------------------------------------------------


def test_queued_items_past_their_deadline_are_expired_and_reported() -> None:
    clock = FakeClock()
    s = make(clock, admission=False, shed_unmeetable=False)
    s.admit(item(clock, "blocker", 60, service_s=5.0))
    assert s.next_for("a") is not None
    s.admit(item(clock, "short-fuse", 2.0))
    s.admit(item(clock, "patient", 30.0))
    clock.t += 2.5
    [gone] = s.expire()
    assert gone.id == "short-fuse"
    assert gone.state is ItemState.EXPIRED
    assert gone.expiry_reason == "deadline_passed"
    assert [i.id for i in s.queued("a")] == ["patient"]
    assert s.expire() == []  # reported once
    assert s.cancel("short-fuse") is CancelOutcome.NOT_FOUND


def test_items_that_can_no_longer_finish_are_shed_at_dispatch() -> None:
    clock = FakeClock()
    s = make(clock, admission=False)
    s.admit(item(clock, "blocker", 60, service_s=5.0))
    blocker = s.next_for("a")
    assert blocker is not None
    s.admit(item(clock, "doomed", 6.0, service_s=2.0))
    s.admit(item(clock, "fine", 60.0))
    clock.t += 4.5  # 1.5 s left, 2 s of work
    s.complete(blocker)
    nxt = s.next_for("a")
    assert nxt is not None
    assert nxt.id == "fine"
    [doomed] = s.expire()
    assert doomed.id == "doomed"
    assert doomed.expiry_reason == "deadline_unmeetable"


# -- cancellation -----------------------------------------------------------------------


def test_cancelled_queued_item_never_runs() -> None:
    clock = FakeClock()
    s = make(clock)
    s.admit(item(clock, "keep", 60))
    s.admit(item(clock, "drop", 30))
    assert s.cancel("drop") is CancelOutcome.REMOVED
    assert drain(s) == ["keep"]
    assert s.cancel("drop") is CancelOutcome.NOT_FOUND


def test_cancelled_running_item_is_flagged_and_holds_its_slot_until_completed() -> None:
    clock = FakeClock()
    s = make(clock)
    s.admit(item(clock, "run", 60))
    s.admit(item(clock, "wait", 60))
    running = s.next_for("a")
    assert running is not None
    assert s.cancel("run") is CancelOutcome.FLAGGED
    assert running.cancelled  # what the backend polls between decode steps
    assert s.next_for("a") is None  # the slot is busy until the backend stops
    learned_before = s.predictor("a").observations
    s.complete(running, ObservedTimings(ttft_s=0.1, total_s=0.2, output_tokens=2))
    assert running.state is ItemState.CANCELLED
    assert s.predictor("a").observations == learned_before  # partial runs teach nothing
    nxt = s.next_for("a")
    assert nxt is not None
    assert nxt.id == "wait"
    with pytest.raises(KeyError):
        s.complete(running)


# -- work stealing ----------------------------------------------------------------------


def test_idle_backend_takes_eligible_work_queued_elsewhere() -> None:
    clock = FakeClock()
    s = make(clock, backend("a"), backend("b"), admission=False)
    s.admit(item(clock, "only-a", 60, eligible=("a",)))
    s.admit(item(clock, "either", 60, eligible=("a", "b")))
    s.admit(item(clock, "only-a-2", 60, eligible=("a",)))
    assert s.next_for("a") is not None
    stolen = s.next_for("b")
    queued_on_b = [i.id for i in s.queued("b")]
    assert stolen is not None
    assert stolen.id not in ("only-a", "only-a-2")
    assert stolen.backend == "b"
    assert queued_on_b == []
    assert s.next_for("b") is None  # nothing left it may run


# -- the predictor ----------------------------------------------------------------------

TRUE = {"a": 0.2, "b": 0.0008, "c": 0.0015, "d": 0.04}  # s, s/prompt tok, s/image tok, s/tok


def _observe(p: LatencyPredictor, rng: np.random.Generator, n: int, noise: float = 0.05) -> None:
    for _ in range(n):
        prompt, image = int(rng.integers(20, 2000)), int(rng.choice([0, 256, 1024]))
        out = int(rng.integers(2, 128))
        ttft = TRUE["a"] + TRUE["b"] * prompt + TRUE["c"] * image
        ttft *= float(rng.lognormal(0, noise))
        total = ttft + TRUE["d"] * (out - 1) * float(rng.lognormal(0, noise))
        p.observe(prompt, image, 128, ObservedTimings(ttft, total, out))


def _true_service(prompt: int, image: int, out: float) -> float:
    return TRUE["a"] + TRUE["b"] * prompt + TRUE["c"] * image + TRUE["d"] * (out - 1)


def test_priors_hold_until_warm_up_ends_then_observations_take_over() -> None:
    prior = PredictorConfig(warmup_observations=20)
    p = LatencyPredictor(prior)
    prior_estimate = p.service_s(500, 256, 128)
    rng = np.random.default_rng(0)
    _observe(p, rng, 19)
    assert not p.warmed_up
    assert p.service_s(500, 256, 128) == prior_estimate
    _observe(p, rng, 1)
    assert p.warmed_up
    assert p.service_s(500, 256, 128) != prior_estimate


def test_learned_model_predicts_unseen_requests() -> None:
    p = LatencyPredictor(PredictorConfig(warmup_observations=10))
    _observe(p, np.random.default_rng(1), 300)
    k = p.coefficients()
    assert k["decode_s_per_token"] == pytest.approx(TRUE["d"], rel=0.1)
    for prompt, image in [(100, 0), (1500, 256), (800, 1024)]:
        est = p.estimate(prompt, image, 128)
        truth_ttft = TRUE["a"] + TRUE["b"] * prompt + TRUE["c"] * image
        assert est.ttft_s == pytest.approx(truth_ttft, rel=0.1)
        assert est.total_s == pytest.approx(_true_service(prompt, image, est.output_tokens), 0.1)
    # The generated length was ~half of max_output_tokens, and it learned that too.
    assert k["output_fraction"] == pytest.approx(65 / 128, rel=0.15)


def test_predictor_shrugs_off_outliers_and_stays_non_negative() -> None:
    p = LatencyPredictor(PredictorConfig(warmup_observations=0))
    rng = np.random.default_rng(2)
    _observe(p, rng, 100)
    for _ in range(3):  # cold-start stalls: 30 s for a tiny prompt
        p.observe(10, 0, 128, ObservedTimings(30.0, 31.0, 5))
        p.observe(10, 0, 128, ObservedTimings(0.0, 0.0, 1))  # and a cache hit: instant
    k = p.coefficients()
    assert min(k.values()) >= 0.0
    assert p.estimate(1000, 256, 128).ttft_s == pytest.approx(
        TRUE["a"] + TRUE["b"] * 1000 + TRUE["c"] * 256, rel=0.25
    )


def test_predictor_stays_stable_over_a_long_run() -> None:
    # Days of traffic: the fit must neither diverge nor wind up (it once did after ~7,000
    # observations, when rounding made the RLS covariance indefinite).
    p = LatencyPredictor(PredictorConfig(warmup_observations=0))
    rng = np.random.default_rng(1)
    truth = TRUE["a"] + TRUE["b"] * 300 + TRUE["c"] * 256
    worst = 0.0
    for n in range(12_000):
        prompt = int(np.clip(rng.lognormal(np.log(300), 0.8), 20, 3000))
        image = int(rng.choice([0, 256, 1024]))
        ttft = (TRUE["a"] + TRUE["b"] * prompt + TRUE["c"] * image) * rng.lognormal(0, 0.2)
        p.observe(prompt, image, 128, ObservedTimings(ttft, ttft + 1.0, 30))
        if n >= 500 and n % 100 == 0:
            worst = max(worst, abs(p.estimate(300, 256, 128).ttft_s - truth))
    assert worst < 0.1 * truth


def test_predictor_follows_a_backend_that_slows_down() -> None:
    p = LatencyPredictor(PredictorConfig(warmup_observations=0))
    rng = np.random.default_rng(3)
    _observe(p, rng, 200)
    for key in ("a", "b", "c"):
        TRUE[key] *= 2
    try:
        _observe(p, rng, 400)
        assert p.estimate(1000, 256, 128).ttft_s == pytest.approx(
            TRUE["a"] + TRUE["b"] * 1000 + TRUE["c"] * 256, rel=0.15
        )
    finally:
        for key in ("a", "b", "c"):
            TRUE[key] /= 2


def test_cold_backend_tries_work_its_priors_call_late_and_learns_the_truth() -> None:
    # Priors say 4 s; the backend really takes 1 s. A 3 s deadline is admitted while the
    # predictor warms up (no refusal on a guess), and on merit once it has learned.
    clock = FakeClock()
    cfg = FIXED.model_copy(update={"ttft_s_per_prompt_token": 0.004, "warmup_observations": 3})
    strict = make(clock, backend(cfg=cfg), reject_on_priors=True)
    d = strict.admit(item(clock, "x", 3.0))
    assert d.reason is RejectReason.DEADLINE_UNMEETABLE
    assert d.predicted_s == pytest.approx(4.0)
    s = make(clock, backend(cfg=cfg))
    assert s.admit(item(clock, "cold", 3.0)).accepted
    for i in range(3):
        it = s.next_for("a")
        assert it is not None
        clock.t += 1.0
        s.complete(it, ObservedTimings(ttft_s=1.0, total_s=1.0, output_tokens=1))
        s.admit(item(clock, f"w{i}", 60))
    assert s.predictor("a").warmed_up
    assert s.admit(item(clock, "warm", 4.0)).predicted_s == pytest.approx(2.0, rel=0.05)


def test_observed_timings_change_admission() -> None:
    # The priors say 1 s; the backend turns out to take 4 s: a 3 s deadline becomes hopeless.
    clock = FakeClock()
    cfg = FIXED.model_copy(update={"warmup_observations": 3})
    s = make(clock, backend(cfg=cfg))
    for i in range(3):
        s.admit(item(clock, f"w{i}", 60))
        it = s.next_for("a")
        assert it is not None
        clock.t += 4.0
        s.complete(it, ObservedTimings(ttft_s=4.0, total_s=4.0, output_tokens=1))
    d = s.admit(item(clock, "after", 3.0))
    assert not d.accepted
    assert d.predicted_s == pytest.approx(4.0, rel=0.05)


def test_item_from_policy_carries_deadline_priority_and_token_budget() -> None:
    policy = SlaPolicy(deadline_ms=2500, priority=CRIT, max_output_tokens=64)
    it = item_from_policy("r1", policy, now=10.0, eligible={"cloud"}, prompt_tokens=300)
    assert (it.deadline, it.priority, it.max_output_tokens) == (12.5, CRIT, 64)
    assert it.eligible == frozenset({"cloud"})
    assert it.state is ItemState.NEW
