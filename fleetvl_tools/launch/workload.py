"""The demo's mixed workload, sent with the stock ``openai`` client through the site agents
(site applications) and the router (cloud-side clients), and the outcome of every request.

With the trained fleet models the pictures and questions come from the fleet VQA generator
(test split, a fixed seed, substation tasks for substations and retail tasks for stores), each
with its expected answer, so every answer is graded; the random-weight fallback gets PIL
drawings of gauges and shelves and no grading.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import NotRequired, TypedDict

from fleetvl.answers import answer_matches
from fleetvl_tools.launch.images import gauge_png, png_bytes, shelf_png

__all__ = ["Outcome", "Planned", "plan_workload", "repeats_of", "run_workload",
           "send"]  # fmt: skip


class SiteEndpoint(TypedDict):
    """A site of the running fleet, as ``endpoints.json`` lists it."""

    id: str
    tenant: str
    kind: str
    url: str
    residency: str
    min_confidence: float | None


class Endpoints(TypedDict):
    """``endpoints.json``: where the running fleet's services listen (``fleetvl up``)."""

    model: str
    trained: bool
    base_port: int
    redis_url: str
    router_http: str
    router_grpc: str
    controller_http: str
    controller_grpc: str
    status_page: str
    admin_token: str
    cloud_worker_grpc: str
    ray_gcs: str
    api_keys: dict[str, str]  # tenant -> demo API key
    sites: list[SiteEndpoint]
    pids: dict[str, int | None]
    logs: str
    timings: NotRequired[dict[str, float]]  # in the published file

FLEET_SEED = 9  # the demo's fleet questions: samples of the test split drawn with this seed
FLEET_MAX_TOKENS = 8  # the longest answer ("closed", "normal", three digits) and its end token

GAUGE_QUESTIONS = ["What does the oil-temperature gauge read?", "Is the needle in the red zone?",
                   "Read the pressure gauge.", "What value does the dial show?"]  # fmt: skip
SHELF_QUESTIONS = ["Which shelf row has an empty slot?", "How many products are missing?",
                   "Is the top shelf fully stocked?", "Where is the gap on the shelf?"]  # fmt: skip


@dataclass(frozen=True)
class Planned:
    site: str
    tenant: str
    via: str  # "agent" (a site application) or "router" (a cloud-side client)
    kind: str  # loose, tight, critical, batch, burst, router, repeat
    question: str
    image: bytes
    sla: dict[str, str | int] = field(default_factory=dict)  # the request's SLA fields
    max_tokens: int = 12
    expected: str | None = None  # the fleet question's exact answer (None: not graded)
    task: str | None = None  # the fleet generator's task
    # Greedy answers whatever the seed, but the seed is part of the response-cache key: a
    # per-run seed keeps answers cached by earlier runs from serving this run's first asks,
    # without touching the question the model reads.
    seed: int | None = None


@dataclass
class Outcome:
    req: Planned
    status: int  # HTTP status (200 answered, 202 queued, >= 400 refused)
    latency_s: float
    served_by: str | None = None  # edge, cloud, cache
    escalated: bool = False  # the site's edge attempt was sent to the cloud
    escalation_reason: str | None = None
    deadline_ms: float | None = None
    reason: str | None = None  # why it was refused
    text: str = ""

    @property
    def answered(self) -> bool:
        return self.status == 200

    @property
    def correct(self) -> bool | None:
        """Whether the answer is the expected one; None when not graded or not answered."""
        if self.req.expected is None or not self.answered:
            return None
        return answer_matches(self.text, self.req.expected)

    @property
    def met_sla(self) -> bool:
        if not self.answered or self.deadline_ms is None:
            return False
        return self.latency_s * 1000 <= self.deadline_ms


@dataclass(frozen=True)
class Question:
    image: bytes
    question: str
    expected: str | None = None
    task: str | None = None


def _drawn(kind: str, i: int) -> Question:
    """A PIL drawing and a loose question (the random-weight fallback: nothing to grade)."""
    rng = random.Random(i)
    if kind == "substation":
        return Question(gauge_png(rng.uniform(0, 100), seed=i),
                        GAUGE_QUESTIONS[i % len(GAUGE_QUESTIONS)])  # fmt: skip
    empty = {rng.randrange(18) for _ in range(rng.randint(0, 3))}
    return Question(shelf_png(empty, seed=i), SHELF_QUESTIONS[i % len(SHELF_QUESTIONS)])


def fleet_question(kind: str, i: int) -> Question:
    """Sample ``i`` of the fleet generator's test split (seed ``FLEET_SEED``) from the tasks of
    the site's kind: substation tasks for substations, retail tasks for everything else."""
    from fleetvl_tools.fleetdata import TASKS, generate

    site = "substation" if kind == "substation" else "retail"
    tasks = [t for t, (s, _) in TASKS.items() if s == site]
    sample = next(generate("test", 1, seed=FLEET_SEED, tasks=tasks, start=i))
    return Question(png_bytes(sample.image), sample.question, sample.answer, sample.task)


def plan_workload(sites: list[SiteEndpoint], per_site: int = 6, burst: int = 12,
                  run_seed: int | None = None,
                  fleet_questions: bool = False) -> list[list[Planned]]:  # fmt: skip
    """Phases run one after another; requests inside a phase run concurrently.

    Per site: loose deadlines, a tight one the local model can hardly make, a critical and a
    batch request; then cloud-side clients through the router for every site (the edge_only
    site's go down its agent's connection); then a burst at one site; then repeats of earlier
    questions the cloud answered (see :func:`repeats_of`). ``fleet_questions``: the fleet
    generator's questions with their expected answers (the trained models), else drawings."""
    n = 0

    def ask(s: SiteEndpoint, via: str, kind: str, sla: dict[str, str | int] | None = None,
            i: int | None = None) -> Planned:  # fmt: skip
        nonlocal n
        if i is None:
            n += 1
            i = n
        q = fleet_question(s["kind"], i) if fleet_questions else _drawn(s["kind"], i)
        return Planned(s["id"], s["tenant"], via, kind, q.question, q.image, sla or {},
                       FLEET_MAX_TOKENS if fleet_questions else 12, q.expected, q.task,
                       run_seed)  # fmt: skip

    steady: list[Planned] = []
    for s in sites:
        for j in range(per_site):
            sla: dict[str, str | int]
            kind, sla = "loose", {}
            if j == 1:
                kind, sla = "tight", {"deadline_ms": 60}
            elif j == 2:
                kind, sla = "critical", {"priority": "critical"}
            elif j == 3:
                kind, sla = "batch", {"priority": "batch", "deadline_ms": 20000}
            steady.append(ask(s, "agent", kind, sla))
    via_router = [ask(s, "router", "router") for s in sites for _ in range(2)]
    target = next((s for s in sites if s["residency"] != "edge_only" and s["kind"] != "substation"),
                  sites[-1])  # fmt: skip
    bursts = [ask(target, "agent", "burst") for _ in range(burst)]
    # Refused on purpose: a request loosening an edge_only site's residency (422, the level
    # that set it named) and a deadline no backend can meet (503 at admission, at once).
    strict = next((s for s in sites if s["residency"] == "edge_only"), sites[0])
    via_router += [
        ask(strict, "router", "loosen", {"residency": "cloud_ok"}, n + 1),
        ask(sites[-1], "router", "too-tight", {"deadline_ms": 1}, n + 1),
    ]
    return [steady, via_router, bursts]


def repeats_of(outs: list[Outcome], limit: int = 4) -> list[Planned]:
    """Escalated questions asked again at their site: the cloud's answers come from the shared
    response cache (``served_by: cache``)."""
    picked = [o.req for o in outs if o.escalated and o.req.kind != "repeat"][:limit]
    return [replace(p, kind="repeat") for p in picked]


def refusal_reason(body: object) -> str:
    """``reason`` (or ``type``) and the message of an OpenAI-shaped error body."""
    err = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return str(body)[:120]
    head = err.get("reason") or err.get("type") or "error"
    msg = str(err.get("message") or "")
    return f"{head}: {msg[:100]}" if msg else str(head)


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def send(p: Planned, endpoints: Endpoints, timeout: float = 60.0) -> Outcome:
    """One request with the stock ``openai`` client; refusals become outcomes with a reason."""
    import openai

    site = next(s for s in endpoints["sites"] if s["id"] == p.site)
    key = endpoints["api_keys"][p.tenant]
    base = site["url"] if p.via == "agent" else endpoints["router_http"]
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=timeout)
    extra_body: dict[str, object] = {"sla": p.sla} if p.sla else {}
    headers = {"x-fleetvl-site": p.site} if p.via == "router" else {}
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _data_url(p.image)}},
        {"type": "text", "text": p.question}]}]  # fmt: skip
    t0 = time.monotonic()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=endpoints["model"], messages=messages, max_tokens=p.max_tokens,  # type: ignore[arg-type]
            seed=p.seed if p.seed is not None else openai.omit,
            extra_body=extra_body, extra_headers=headers,
        )  # fmt: skip
    except openai.APIStatusError as exc:
        return Outcome(p, exc.status_code, time.monotonic() - t0, reason=refusal_reason(exc.body))
    except openai.APIConnectionError as exc:  # timeouts included
        return Outcome(p, 0, time.monotonic() - t0, reason=f"connection: {exc}")
    latency = time.monotonic() - t0
    if raw.status_code == 202:
        return Outcome(p, 202, latency, reason="queued (uplink down)")
    resp = raw.parse()
    fv = (resp.model_extra or {}).get("fleetvl") or {}
    policy = fv.get("policy") or {}
    deadline = (policy.get("deadline_ms") or {}).get("value")
    return Outcome(
        p, 200, latency, served_by=fv.get("served_by"),
        escalated=p.via == "agent" and fv.get("served_by") in ("cloud", "cache"),
        escalation_reason=fv.get("escalation_reason"), deadline_ms=deadline,
        text=resp.choices[0].message.content or "",
    )  # fmt: skip


def run_workload(phases: list[list[Planned]], endpoints: Endpoints,
                 progress: Callable[[int, int, Outcome], None],
                 concurrency: int = 4) -> list[Outcome]:  # fmt: skip
    total = sum(len(ph) for ph in phases)
    done: list[Outcome] = []
    lock = threading.Lock()

    def one(p: Planned) -> Outcome:
        out = send(p, endpoints)
        with lock:
            done.append(out)
            progress(len(done), total, out)
        return out

    for phase in [*phases, None]:
        if phase is None:  # last: repeats of what the cloud answered
            phase = repeats_of(done)
            total += len(phase)
        if not phase:
            continue
        burst = phase[0].kind == "burst"
        with ThreadPoolExecutor(len(phase) if burst else concurrency) as pool:
            list(pool.map(one, phase))
    return done
