"""Scheduler benchmark: goodput of FIFO, EDF and EDF+admission on the same request traces.

    python benchmarks/scheduler.py [--quick] [--json PATH] [--seed N]

A discrete-event simulation drives the real :class:`fleetvl.scheduling.Scheduler` through its
injected clock (nothing is reimplemented; only the backends are simulated):

* two backends with known service-time models the scheduler does not know: ``cloud`` (4 slots)
  and ``edge`` (2 slots, ~2.5x slower); service = TTFT (linear in prompt and image tokens) +
  per-token decode, each with lognormal noise; the predictor starts from priors ~1.5x off;
* Poisson arrivals at 0.8x, 1.0x, 1.2x and 1.5x of capacity (the sum over backends of slots /
  mean service time); a mix of priorities (critical 10%, standard 60%, batch 30%) with their
  own deadlines, of residencies (10% edge only, 10% cloud only), prompt and image sizes and
  output lengths (a random share of ``max_output_tokens``); 3% of clients cancel at a random
  moment before their deadline;
* every variant replays the same trace with the same noise draws (paired comparison); they
  differ only in the ordering and the admission switches. ``fifo`` is a plain queue that knows
  nothing of deadlines (arrival order, classes ignored, every queued item is started, even one
  whose deadline has passed); ``fifo+expiry`` (the same, but never starting an item past its
  deadline, as a queue does once client timeouts cancel queued work), ``fifo+classes``
  (arrival order within priority classes) and ``edf`` (deadline order within classes) admit
  everything and drop expired items; ``edf+admission`` also rejects at arrival what is
  predicted late and sheds queued work that can no longer finish in time. The targets are
  stated against ``fifo``; the ratios against ``fifo+expiry``, a stronger baseline, are
  reported beside them.

Goodput: answers completed by their deadline per second of trace. Wasted compute: backend
seconds spent on answers that finished late or whose client had cancelled. Ceiling: offered
load / FIFO goodput, the ratio a scheduler would reach if it answered every request on time.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleetvl.policy import Priority  # noqa: E402
from fleetvl.scheduling import (  # noqa: E402
    BackendSpec,
    CancelOutcome,
    Edf,
    Fifo,
    ObservedTimings,
    Ordering,
    PredictorConfig,
    Scheduler,
    SchedulerConfig,
    WorkItem,
)

LOADS = (0.8, 1.0, 1.2, 1.5)
TICK_S = 0.25  # how often the simulated service calls expire()

# Ground truth per backend: slots, TTFT = a + b*prompt + c*image, decode d s/token.
TRUTH = {
    "cloud": {"slots": 4, "a": 0.05, "b": 0.0002, "c": 0.0004, "d": 0.015},
    "edge": {"slots": 2, "a": 0.10, "b": 0.0006, "c": 0.0012, "d": 0.035},
}
NOISE_SIGMA = 0.2  # lognormal sigma of each service component
PRIOR_ERROR = 1.5  # the operator's priors overestimate every coefficient by this factor
WARMUP = 20
# Per class: share of requests, deadline range (s), max_output_tokens choices. A class's SLA
# fits its answers: alarms are short and urgent, reports long and patient.
CLASSES = {
    Priority.CRITICAL: {"share": 0.1, "deadline_s": (2.0, 5.0), "max_out": (32, 64)},
    Priority.STANDARD: {"share": 0.6, "deadline_s": (4.0, 15.0), "max_out": (64, 128, 256)},
    Priority.BATCH: {"share": 0.3, "deadline_s": (30.0, 120.0), "max_out": (256, 512)},
}
PRIORITIES = tuple(CLASSES)
ELIGIBLE = (frozenset({"cloud", "edge"}), frozenset({"edge"}), frozenset({"cloud"}))
ELIGIBLE_P = (0.8, 0.1, 0.1)
CANCEL_P = 0.03

VARIANTS: dict[str, tuple[Ordering, SchedulerConfig]] = {
    # A plain queue: no notion of deadlines, so it also starts work whose client has given up.
    "fifo": (
        Fifo(by_priority=False),
        SchedulerConfig(admission=False, drop_expired=False, shed_unmeetable=False),
    ),
    "fifo+expiry": (
        Fifo(by_priority=False),
        SchedulerConfig(admission=False, shed_unmeetable=False),
    ),
    "fifo+classes": (Fifo(), SchedulerConfig(admission=False, shed_unmeetable=False)),
    "edf": (Edf(), SchedulerConfig(admission=False, shed_unmeetable=False)),
    "edf+admission": (Edf(), SchedulerConfig(admission=True, shed_unmeetable=True)),
}


@dataclass
class Trace:
    """One seeded workload; noise is drawn per request and backend, so variants share it."""

    arrival: np.ndarray
    priority: np.ndarray
    eligible: np.ndarray
    prompt: np.ndarray
    image: np.ndarray
    max_out: np.ndarray
    out: np.ndarray
    deadline: np.ndarray  # relative, seconds
    cancel_after: np.ndarray  # relative, seconds; inf: never
    noise: dict[str, np.ndarray]  # backend -> (n, 2): TTFT and decode multipliers

    def __len__(self) -> int:
        return len(self.arrival)


def make_requests(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    prio = rng.choice(3, n, p=[c["share"] for c in CLASSES.values()])
    lo, hi = np.array([c["deadline_s"] for c in CLASSES.values()])[prio].T
    deadline = rng.uniform(lo, hi)
    max_out = np.array([rng.choice(CLASSES[PRIORITIES[k]]["max_out"]) for k in prio], dtype=int)
    cancel = np.where(rng.random(n) < CANCEL_P, rng.uniform(0, deadline), np.inf)
    return {
        "priority": prio,
        "eligible": rng.choice(3, n, p=ELIGIBLE_P),
        "prompt": np.clip(rng.lognormal(np.log(300), 0.8, n), 20, 3000).astype(int),
        "image": rng.choice([0, 256, 1024], n, p=[0.2, 0.5, 0.3]),
        "max_out": max_out,
        "out": np.maximum(1, (max_out * rng.uniform(0.2, 1.0, n)).astype(int)),
        "deadline": deadline,
        "cancel_after": cancel,
        "noise": {b: rng.lognormal(0, NOISE_SIGMA, (n, 2)) for b in TRUTH},
    }


def true_service(b: str, prompt: Any, image: Any, out: Any, noise: Any) -> tuple[Any, Any]:
    """(TTFT, total) seconds of requests on backend ``b``."""
    t = TRUTH[b]
    ttft = (t["a"] + t["b"] * prompt + t["c"] * image) * noise[..., 0]
    return ttft, ttft + t["d"] * (out - 1) * noise[..., 1]


def capacity_rps(seed: int) -> tuple[float, dict[str, float]]:
    r = make_requests(np.random.default_rng(seed + 10_000), 50_000)
    mean = {
        b: float(true_service(b, r["prompt"], r["image"], r["out"], r["noise"][b])[1].mean())
        for b in TRUTH
    }
    return sum(TRUTH[b]["slots"] / mean[b] for b in TRUTH), mean


def make_trace(seed: int, rate: float, duration_s: float) -> Trace:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, int(rate * duration_s * 1.2) + 100)
    arrival = np.cumsum(gaps)
    arrival = arrival[arrival < duration_s]
    return Trace(arrival=arrival, **make_requests(rng, len(arrival)))


def backends() -> list[BackendSpec]:
    return [
        BackendSpec(
            name=b,
            slots=t["slots"],
            predictor=PredictorConfig(
                ttft_base_s=t["a"] * PRIOR_ERROR,
                ttft_s_per_prompt_token=t["b"] * PRIOR_ERROR,
                ttft_s_per_image_token=t["c"] * PRIOR_ERROR,
                decode_s_per_token=t["d"] * PRIOR_ERROR,
                warmup_observations=WARMUP,
            ),
        )
        for b, t in TRUTH.items()
    ]


class Simulation:
    """Replays one trace through one scheduler variant on a simulated clock."""

    def __init__(self, trace: Trace, ordering: Ordering, config: SchedulerConfig) -> None:
        self.trace = trace
        self.now = 0.0
        self.sched = Scheduler(backends(), lambda: self.now, ordering, config)
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.running: dict[str, tuple[WorkItem, float, ObservedTimings]] = {}
        self.c = dict.fromkeys(("on_time", "late", "expired", "cancelled"), 0)
        self.c_crit = {"on_time": 0, "offered": 0}
        self.rejected: dict[str, int] = {}
        self.busy_s = self.wasted_s = 0.0
        self.admit_cpu_s = 0.0

    def push(self, t: float, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def run(self) -> dict[str, Any]:
        tr = self.trace
        for i, t in enumerate(tr.arrival):
            self.push(float(t), "arrive", i)
            if np.isfinite(tr.cancel_after[i]):
                self.push(float(t + tr.cancel_after[i]), "cancel", i)
        end = float(tr.arrival[-1]) if len(tr) else 0.0
        for k in range(int(end / TICK_S) + 2):
            self.push(k * TICK_S, "tick", None)
        while self.events:
            self.now, _, kind, payload = heapq.heappop(self.events)
            getattr(self, "_" + kind)(payload)
            self._dispatch()
        self._count_expired()
        return self._result(end)

    def _arrive(self, i: int) -> None:
        tr = self.trace
        prio = PRIORITIES[tr.priority[i]]
        self.c_crit["offered"] += prio is Priority.CRITICAL
        item = WorkItem(
            id=str(i),
            eligible=ELIGIBLE[tr.eligible[i]],
            priority=prio,
            arrival=self.now,
            deadline=self.now + float(tr.deadline[i]),
            prompt_tokens=int(tr.prompt[i]),
            image_tokens=int(tr.image[i]),
            max_output_tokens=int(tr.max_out[i]),
        )
        t0 = time.perf_counter()
        d = self.sched.admit(item)
        self.admit_cpu_s += time.perf_counter() - t0
        if not d.accepted:
            self.rejected[str(d.reason)] = self.rejected.get(str(d.reason), 0) + 1

    def _dispatch(self) -> None:
        tr = self.trace
        for b in self.sched.backends:
            while (item := self.sched.next_for(b)) is not None:
                i = int(item.id)
                ttft, total = true_service(b, tr.prompt[i], tr.image[i], tr.out[i], tr.noise[b][i])
                t = ObservedTimings(float(ttft), float(total), int(tr.out[i]))
                self.running[item.id] = (item, self.now, t)
                self.push(self.now + t.total_s, "finish", item.id)

    def _finish(self, item_id: str) -> None:
        rec = self.running.pop(item_id, None)
        if rec is None:
            return  # stopped earlier by a cancel
        item, start, timings = rec
        on_time = self.sched.complete(item, timings)
        self.busy_s += self.now - start
        if on_time:
            self.c["on_time"] += 1
            self.c_crit["on_time"] += item.priority is Priority.CRITICAL
        else:
            self.c["late"] += 1
            self.wasted_s += self.now - start

    def _cancel(self, i: int) -> None:
        outcome = self.sched.cancel(str(i))
        if outcome is CancelOutcome.NOT_FOUND:
            return  # already answered, rejected or expired
        self.c["cancelled"] += 1
        if outcome is CancelOutcome.FLAGGED:
            # The backend sees item.cancelled at its next decode step; modelled as at once.
            item, start, _ = self.running.pop(str(i))
            assert item.cancelled
            self.sched.complete(item, None)
            self.busy_s += self.now - start
            self.wasted_s += self.now - start

    def _tick(self, _: None) -> None:
        self._count_expired()

    def _count_expired(self) -> None:
        self.c["expired"] += len(self.sched.expire())

    def _result(self, duration_s: float) -> dict[str, Any]:
        n = len(self.trace)
        served = n - self.c["cancelled"]
        rejected = sum(self.rejected.values())
        assert sum(self.c.values()) + rejected == n, "every request must end exactly once"
        return {
            "requests": n,
            "goodput_rps": self.c["on_time"] / duration_s,
            "deadline_attainment": self.c["on_time"] / max(served, 1),
            "critical_attainment": self.c_crit["on_time"] / max(self.c_crit["offered"], 1),
            "on_time": self.c["on_time"],
            "late": self.c["late"],
            "rejected": rejected,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "rejected_share": rejected / max(n, 1),
            "expired_in_queue": self.c["expired"],
            "cancelled_by_client": self.c["cancelled"],
            "busy_backend_s": self.busy_s,
            "wasted_backend_s": self.wasted_s,
            "wasted_share_of_busy": self.wasted_s / max(self.busy_s, 1e-9),
            "admit_cpu_us_mean": self.admit_cpu_s / max(n, 1) * 1e6,
            "predictors": self.sched.snapshot(),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short traces (300 s instead of 3600 s)")
    ap.add_argument("--json", type=Path, help="write every printed figure here")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-cloud", action="store_true", help="skip the real cloud engine's part")
    args = ap.parse_args()
    duration_s = 300.0 if args.quick else 3600.0
    t_start = time.perf_counter()

    capacity, mean_service = capacity_rps(args.seed)
    print(
        f"capacity {capacity:.2f} req/s (mean service: "
        + ", ".join(f"{b} {s:.2f} s x {TRUTH[b]['slots']} slots" for b, s in mean_service.items())
        + f"); traces of {duration_s:.0f} s simulated, seed {args.seed}",
        flush=True,
    )
    levels = []
    for k, load in enumerate(LOADS):
        t0 = time.perf_counter()
        trace = make_trace(args.seed + k, load * capacity, duration_s)
        results = {name: Simulation(trace, o, c).run() for name, (o, c) in VARIANTS.items()}
        levels.append(
            {
                "load_factor": load,
                "offered_rps": len(trace) / duration_s,
                "requests": len(trace),
                "variants": results,
                "edf_admission_vs_fifo_goodput": results["edf+admission"]["goodput_rps"]
                / max(results["fifo"]["goodput_rps"], 1e-9),
                "edf_admission_vs_fifo_expiry_goodput": results["edf+admission"]["goodput_rps"]
                / max(results["fifo+expiry"]["goodput_rps"], 1e-9),
                "edf_admission_vs_fifo_classes_goodput": results["edf+admission"]["goodput_rps"]
                / max(results["fifo+classes"]["goodput_rps"], 1e-9),
                "ceiling_offered_vs_fifo_goodput": len(trace)
                / duration_s
                / max(results["fifo"]["goodput_rps"], 1e-9),
            }
        )
        print(
            f"[{k + 1}/{len(LOADS)}] load {load:.1f}x, {len(trace)} requests: goodput "
            + ", ".join(f"{n} {r['goodput_rps']:.2f}/s" for n, r in results.items())
            + f" ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    by_load = {lv["load_factor"]: lv for lv in levels}
    result: dict[str, Any] = {
        "config": {
            "seed": args.seed,
            "quick": args.quick,
            "trace_duration_s": duration_s,
            "loads": list(LOADS),
            "tick_s": TICK_S,
            "backends_truth": TRUTH,
            "service_noise_lognormal_sigma": NOISE_SIGMA,
            "prior_error_factor": PRIOR_ERROR,
            "predictor_warmup_observations": WARMUP,
            "classes": {p.value: c for p, c in CLASSES.items()},
            "eligibility_mix": {
                "both": ELIGIBLE_P[0],
                "edge_only": ELIGIBLE_P[1],
                "cloud_only": ELIGIBLE_P[2],
            },  # fmt: skip
            "client_cancel_share": CANCEL_P,
            "variants": {
                n: {"ordering": o.name, "by_priority": o.by_priority, **c.model_dump()}
                for n, (o, c) in VARIANTS.items()
            },
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "capacity_rps": capacity,
        "mean_service_s": mean_service,
        "levels": levels,
        "targets": {
            "edf_admission_ge_1.5x_fifo_goodput_at_1.2x": by_load[1.2][
                "edf_admission_vs_fifo_goodput"
            ]
            >= 1.5,
            "edf_admission_ge_fifo_goodput_at_0.8x": by_load[0.8]["edf_admission_vs_fifo_goodput"]
            >= 1.0,
        },
    }
    _print_table(result)
    if not args.no_cloud:
        from benchmarks._cloud_deadlines import run_cloud

        print("\nthe cloud engine's slots (real engine, fleet-cloud on this CPU)", flush=True)
        cloud = run_cloud(args.quick, args.seed)
        result["cloud"] = cloud
        result["targets"]["cloud_deadline_attainment_admitted_ge_0.99"] = (
            cloud["deadline_attainment_admitted"] >= 0.99
        )
        print(
            f"cloud.deadline_attainment_admitted {cloud['deadline_attainment_admitted']:.3f} "
            f"(target >= 0.99; rank+fifo: {cloud['baseline_rank_fifo_attainment']:.3f})"
        )
    result["wall_s"] = time.perf_counter() - t_start
    print(f"wall time {result['wall_s']:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _print_table(r: dict[str, Any]) -> None:
    print(
        f"\nscheduler: 2 backends, capacity {r['capacity_rps']:.2f} req/s, "
        f"{r['config']['trace_duration_s']:.0f} s traces; goodput = answers on time per second"
    )
    head = (
        f"{'load':>5} {'variant':<14}{'offered/s':>10}{'goodput/s':>10}{'attain':>8}"
        f"{'crit':>7}{'reject':>8}{'expired':>8}{'late':>7}{'cancel':>7}"
        f"{'wasted s':>10}{'wasted':>8}{'admit us':>9}"
    )
    print(head)
    for lv in r["levels"]:
        for name, v in lv["variants"].items():
            print(
                f"{lv['load_factor']:>4.1f}x {name:<14}{lv['offered_rps']:>10.2f}"
                f"{v['goodput_rps']:>10.2f}{v['deadline_attainment']:>8.1%}"
                f"{v['critical_attainment']:>7.1%}{v['rejected']:>8}{v['expired_in_queue']:>8}"
                f"{v['late']:>7}{v['cancelled_by_client']:>7}{v['wasted_backend_s']:>10.0f}"
                f"{v['wasted_share_of_busy']:>8.1%}{v['admit_cpu_us_mean']:>9.0f}"
            )
    levels = r["levels"]
    print(f"\n{'goodput ratio':<30}" + "".join(f"{lv['load_factor']:>8.1f}x" for lv in levels))
    for key, label in (
        ("edf_admission_vs_fifo_goodput", "edf+admission / fifo"),
        ("edf_admission_vs_fifo_expiry_goodput", "edf+admission / fifo+expiry"),
        ("edf_admission_vs_fifo_classes_goodput", "edf+admission / fifo+classes"),
        ("ceiling_offered_vs_fifo_goodput", "ceiling: offered / fifo"),
    ):
        print(f"{label:<30}" + "".join(f"{lv[key]:>9.2f}" for lv in levels))
    ref = next(lv for lv in r["levels"] if lv["load_factor"] == 1.0)["variants"]["edf+admission"]
    print("predictor after the 1.0x edf+admission run (learned / true):")
    for b, snap in ref["predictors"].items():
        t = TRUTH[b]
        print(
            f"  {b:<6} TTFT a {snap['ttft_base_s']:.3f}/{t['a']:.3f} s, "
            f"b {snap['ttft_s_per_prompt_token'] * 1e3:.3f}/{t['b'] * 1e3:.3f} ms/tok, "
            f"c {snap['ttft_s_per_image_token'] * 1e3:.3f}/{t['c'] * 1e3:.3f} ms/img tok, "
            f"decode {snap['decode_s_per_token'] * 1e3:.1f}/{t['d'] * 1e3:.1f} ms/tok, "
            f"{snap['observations']} observations"
        )
    t = r["targets"]
    print(
        f"targets: EDF+admission >= 1.5x FIFO goodput at 1.2x: "
        f"{t['edf_admission_ge_1.5x_fifo_goodput_at_1.2x']}; "
        f">= FIFO at 0.8x: {t['edf_admission_ge_fifo_goodput_at_0.8x']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
