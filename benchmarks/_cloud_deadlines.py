"""The cloud engine's side of the scheduler benchmark: deadlines at the slot, on the real engine.

The shipped fleet-cloud model on this machine's CPU (`CloudEngine`, 4 slots). Its capacity is
measured first (a burst of requests, answers per second); then one Poisson trace at 1.2x that
capacity — priority classes (critical 10%, standard 60%, batch 30%) with their own deadlines
(3x, 6x and 12x the mean service time), answers of 8-32 tokens — is replayed against two
variants of the same engine:

- ``rank+deadline``: what the Serve worker does now — each request's absolute deadline is
  passed, slots go by (class, deadline) to requests the engine's measured speed says can still
  finish (:mod:`cloud_worker.engine.admission`); one that cannot ends at once ("deadline");
- ``rank+fifo``: the worker before — no deadline reaches the engine, slots go by class, then
  arrival.

``deadline_attainment_admitted``: answers finished by their deadline / requests given a slot
(the ones refused at the slot got their "no" at once, which is the point). Goodput: answers on
time per second of trace.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ((0, 0.1, 3.0), (1, 0.6, 6.0), (2, 0.3, 12.0))  # rank, share, deadline x service
SLOTS = 4


def _prompts(engine: Any, n: int) -> list[Any]:
    from fleetvl_tools.launch.workload import fleet_question

    out = []
    for i in range(n):
        q = fleet_question("substation" if i % 2 else "retail", 8000 + i)
        msgs = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.question}]}
        ]
        out.append(engine.encode(msgs, [q.image]))
    return out


def _capacity(engine: Any, prompts: list[Any]) -> tuple[float, float]:
    """(answers per second with every slot busy, mean service seconds of one answer)."""
    from fleetvl.sampling import SamplingParams

    n = 4 * SLOTS
    t0 = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        list(
            pool.map(
                lambda i: engine.generate(
                    prompts[i % len(prompts)], SamplingParams(max_tokens=20, ignore_eos=True)
                ),
                range(n),
            )
        )
    took = time.monotonic() - t0
    rate = n / took
    return rate, SLOTS / rate


def _trace(rate: float, duration_s: float, service_s: float, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    t, out = 0.0, []
    shares = [c[1] for c in CLASSES]
    while True:
        t += float(rng.exponential(1 / rate))
        if t >= duration_s:
            return out
        rank, _, mult = CLASSES[int(rng.choice(len(CLASSES), p=shares))]
        out.append(
            {
                "at": t,
                "rank": rank,
                "budget_s": mult * service_s,
                "tokens": int(rng.integers(8, 33)),
                "prompt": int(rng.integers(1 << 30)),
            }
        )


def _replay(engine: Any, prompts: list[Any], trace: list[dict[str, Any]], with_deadline: bool,
            ) -> dict[str, Any]:  # fmt: skip
    from fleetvl.sampling import SamplingParams

    done: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run(r: dict[str, Any], arrival: float) -> None:
        deadline = arrival + r["budget_s"]
        res = engine.generate(
            prompts[r["prompt"] % len(prompts)],
            SamplingParams(max_tokens=r["tokens"], ignore_eos=True),
            rank=r["rank"], deadline=deadline if with_deadline else None,
        )  # fmt: skip
        end = time.monotonic()
        with lock:
            done.append({"rank": r["rank"], "refused": res.finish_reason == "deadline"
                         and not res.token_ids, "on_time": end <= deadline})  # fmt: skip

    start = time.monotonic()
    with ThreadPoolExecutor(256) as pool:
        for r in trace:
            wait = start + r["at"] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            pool.submit(run, r, time.monotonic())
    duration = trace[-1]["at"] if trace else 1.0
    admitted = [d for d in done if not d["refused"]]
    on_time = [d for d in admitted if d["on_time"]]
    crit = [d for d in admitted if d["rank"] == 0]
    return {
        "requests": len(done),
        "refused_at_slot": len(done) - len(admitted),
        "admitted": len(admitted),
        "deadline_attainment_admitted": len(on_time) / max(len(admitted), 1),
        "deadline_attainment_all": len(on_time) / max(len(done), 1),
        "critical_attainment_admitted": sum(d["on_time"] for d in crit) / max(len(crit), 1),
        "goodput_rps": len(on_time) / duration,
    }


def run_cloud(quick: bool, seed: int, say: Any = print) -> dict[str, Any]:
    from cloud_worker.engine import CloudEngine, EngineConfig

    model = ROOT / "models" / "fleet-cloud"
    engine = CloudEngine(model, EngineConfig(max_slots=SLOTS, max_context=1024))
    try:
        prompts = _prompts(engine, 8)
        rate, service_s = _capacity(engine, prompts)
        duration = 20.0 if quick else 60.0
        trace = _trace(1.2 * rate, duration, service_s, seed)
        say(f"cloud engine: capacity {rate:.2f} answers/s (mean service {service_s:.2f} s, "
            f"{SLOTS} slots); {len(trace)} requests at 1.2x over {duration:.0f} s")  # fmt: skip
        variants = {}
        for name, with_deadline in (("rank+deadline", True), ("rank+fifo", False)):
            variants[name] = _replay(engine, prompts, trace, with_deadline)
            v = variants[name]
            say(
                f"  {name:<14} admitted {v['admitted']:>4} of {v['requests']}, on time "
                f"{v['deadline_attainment_admitted']:.1%} of admitted, "
                f"{v['deadline_attainment_all']:.1%} of all, goodput {v['goodput_rps']:.2f}/s"
            )
    finally:
        engine.close()
    return {
        "model": "models/fleet-cloud", "slots": SLOTS, "load_factor": 1.2,
        "capacity_rps": rate, "mean_service_s": service_s, "trace_s": duration,
        "classes": [{"rank": r, "share": s, "deadline_x_service": m} for r, s, m in CLASSES],
        "variants": variants,
        "deadline_attainment_admitted": variants["rank+deadline"]["deadline_attainment_admitted"],
        "baseline_rank_fifo_attainment": variants["rank+fifo"]["deadline_attainment_admitted"],
    }  # fmt: skip
