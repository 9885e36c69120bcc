"""The whole fleet as `fleetvl up` starts it: the real command as a child process (embedded
Redis, a local Ray cluster with the cloud worker serving the trained fleet-cloud model, the
router, the controller, one agent per site of examples/fleet.yaml on the INT4 bundle of the
trained fleet-edge model), 50+ fleet questions with the stock `openai` client through the
agents and the router, then Ctrl-C (SIGINT) and a check that every process it started is gone."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from fleetvl.answers import answer_matches
from fleetvl_tools.launch.workload import fleet_question
from tests.e2e.ports import start_up, wait_ready
from tests.edge_harness import metric, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
# Lower bounds on exact-answer accuracy. The questions are fixed and greedy answers repeat, so
# only which answers the timing-dependent gate sends where varies. Measured: the INT4 edge
# bundle is right on all 30 substation questions of this test's traffic and on 14 of its 20
# retail ones; a run's edge answers scored 28/33 (85%; 74% if every wrong retail answer stayed
# local). `fleetvl demo --per-site 2 --burst 4` scored 14/20 (70%) at the edge, 62% if its
# routing put every wrong answer there. The cloud model (models/fleet-cloud, run 5) answers
# every one of this test's questions right when asked alone (fleet questions 1000-1063 of
# both kinds: wrong only on retail 1052, 1054 and 1061, which this traffic does not ask);
# the bar leaves room for batched decoding to flip a close call.
EDGE_ACCURACY = 0.7
DEMO_EDGE_ACCURACY = 0.6
CLOUD_ACCURACY = 0.85

if not (Path(sys.executable).parent / "ray").exists():
    pytest.skip("`fleetvl up` needs ray[serve] (the cloud extra)", allow_module_level=True)


@dataclass
class Fleet:
    proc: subprocess.Popen[bytes]
    endpoints: dict[str, Any]
    config: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _groups_alive(pids: list[int]) -> list[int]:
    """Process groups (each child of `fleetvl up` leads its own) with a process left."""
    alive = []
    for pid in pids:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet-up")
    proc, config, log = start_up(tmp)
    endpoints_file = tmp / "run" / "endpoints.json"
    endpoints: dict[str, Any] = {}
    try:
        wait_ready(proc, endpoints_file, log, 420)
        endpoints = json.loads(endpoints_file.read_text())
        yield Fleet(proc, endpoints, config, log)
    finally:
        # Ctrl-C, as a person would stop it; then make sure nothing it started survives.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for pid in _groups_alive([p for p in endpoints.get("pids", {}).values() if p]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _ask(base: str, key: str, image: bytes, question: str, site: str | None = None,
         sla: dict[str, Any] | None = None,
         source: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One question with the stock client; the answer's or the refusal's essentials."""
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    try:
        resp = client.chat.completions.create(
            model="fleet-demo", max_tokens=10,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": question}]}],
            extra_body={k: v for k, v in (("sla", sla), ("source", source)) if v} or None,
            extra_headers={"x-fleetvl-site": site} if site else None,
        )  # fmt: skip
    except openai.APIStatusError as exc:
        err = exc.body if isinstance(exc.body, dict) else {}
        return {"status": exc.status_code, "type": err.get("type"), "message": err.get("message")}
    fv = (resp.model_extra or {})["fleetvl"]
    tokens = resp.usage.completion_tokens if resp.usage else 0
    msg = resp.choices[0].message
    return {"status": 200, "served_by": fv["served_by"], "backend": fv.get("backend"),
            "text": msg.content, "refusal": msg.refusal, "verdict": fv["verdict"],
            "out_of_scope": fv.get("out_of_scope"), "tokens": tokens}  # fmt: skip


@pytest.fixture(scope="module")
def traffic(fleet: Fleet) -> dict[str, Any]:
    """5 sites x 8 questions at their agents, 2 per site through the router (cloud-side
    clients), one request loosening the edge_only site's residency, one impossible deadline."""
    e = fleet.endpoints
    before = metric(e["router_http"], "fleetvl_router_backend_requests_total", backend="ray-cloud")
    jobs: list[tuple[str, str | None, dict[str, Any], dict[str, Any] | None]] = []
    n = 0
    for s in e["sites"]:
        for j in range(10):
            n += 1
            sla = {"priority": "critical"} if j == 1 else ({"deadline_ms": 60} if j == 2 else None)
            via_router = j >= 8
            jobs.append((s["id"], s["id"] if via_router else None, s, sla))
    edge_only = next(s for s in e["sites"] if s["residency"] == "edge_only")
    jobs.append(("loosen", edge_only["id"], edge_only, {"residency": "cloud_ok"}))
    jobs.append(("too-tight", e["sites"][1]["id"], e["sites"][1], {"deadline_ms": 1}))

    def run(i: int) -> dict[str, Any]:
        label, router_site, s, sla = jobs[i]
        # Fleet test questions for the site's kind (indices past the demo's own first ones).
        q = fleet_question(s["kind"], 1000 + i)
        base = e["router_http"] if router_site else s["url"]
        out = _ask(base, e["api_keys"][s["tenant"]], q.image, q.question, router_site, sla)
        return {**out, "site": s["id"], "via": "router" if router_site else "agent",
                "label": label, "expected": q.expected, "kind": s["kind"]}  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(len(jobs))))
    after = metric(e["router_http"], "fleetvl_router_backend_requests_total", backend="ray-cloud")
    return {"results": results, "cloud_dispatches": after - before}


def test_every_request_is_answered_or_refused_with_a_reason(traffic: dict[str, Any]) -> None:
    results = traffic["results"]
    assert len(results) >= 50
    for r in results:
        if r["status"] == 200 and r["verdict"] == "unanswerable":
            # A fleet question the scope score refused (about 1 in 100 in-scope ones): a
            # reason, no text.
            assert r["refusal"], r
            assert r["out_of_scope"]["out_of_scope"], r
        elif r["status"] == 200:
            assert r["served_by"] in ("edge", "cloud", "cache"), r
            assert r["tokens"] >= 1, r
        else:
            assert r["status"] >= 400, r
            assert r["type"], r
            assert r["message"], r
    by_label = {r["label"]: r for r in results}
    assert by_label["loosen"]["status"] == 422
    assert "residency" in by_label["loosen"]["message"]
    assert by_label["too-tight"]["status"] in (503, 504), by_label["too-tight"]
    answered = [r for r in results if r["status"] == 200]
    assert len(answered) >= 50 - 2


def test_the_trained_models_answer_the_fleet_questions(
    fleet: Fleet, traffic: dict[str, Any]
) -> None:
    assert fleet.endpoints["trained"] is True
    assert "trained fleet-edge" in fleet.output()
    assert "falling back" not in fleet.output()
    answered = [r for r in traffic["results"] if r["status"] == 200 and r["label"] not in
                ("loosen", "too-tight")]  # fmt: skip
    right = {k: [answer_matches(r["text"] or "", r["expected"]) for r in answered
                 if r["served_by"] == k] for k in ("edge", "cloud")}  # fmt: skip
    # Bounds and what they were measured from: see EDGE_ACCURACY.
    assert len(right["edge"]) >= 20
    assert sum(right["edge"]) / len(right["edge"]) >= EDGE_ACCURACY, right
    substation = [answer_matches(r["text"] or "", r["expected"]) for r in answered
                  if r["served_by"] == "edge" and r["kind"] == "substation"]  # fmt: skip
    assert len(substation) >= 10
    assert sum(substation) / len(substation) >= 0.9
    assert right["cloud"], "the high-bar sites escalated nothing"
    assert sum(right["cloud"]) / len(right["cloud"]) >= CLOUD_ACCURACY, right


def test_escalations_reached_the_cloud_worker(traffic: dict[str, Any]) -> None:
    escalated = [r for r in traffic["results"] if r["via"] == "agent" and r["status"] == 200
                 and r["served_by"] == "cloud"]  # fmt: skip
    # Durham and store-0117 ask for 1.0 accuracy, which no calibration can show: they escalate
    # every answer they can afford to.
    assert {r["site"] for r in escalated} >= {"sub-durham-03", "store-0117"}
    assert traffic["cloud_dispatches"] >= len(escalated) > 0


def test_the_edge_only_site_sent_nothing_to_the_cloud(traffic: dict[str, Any],
                                                       fleet: Fleet) -> None:  # fmt: skip
    e = fleet.endpoints
    site = next(s for s in e["sites"] if s["residency"] == "edge_only")
    mine = [r for r in traffic["results"] if r["site"] == site["id"] and r["status"] == 200]
    assert len(mine) == 10  # 8 at its agent, 2 from cloud-side clients through the router
    assert {r["served_by"] for r in mine} == {"edge"}
    routed = [r for r in mine if r["via"] == "router"]
    assert {r["backend"] for r in routed} == {f"agent-{site['id']}"}  # down its own uplink
    assert metric(site["url"], "fleetvl_edge_escalations_total") == 0
    assert metric(e["router_http"], "fleetvl_router_residency_violations_total") == 0
    # The router's request log (one JSON line per request): this site's HTTP requests went to
    # its own agent, and it made no escalation call (gRPC Generate) at all, while the
    # high-bar sites made many.
    router_log = Path(e["logs"]) / "router.log"
    lines = [json.loads(x) for x in router_log.read_text().splitlines() if x.startswith("{")]
    http = [x for x in lines if x.get("site") == site["id"] and x.get("api") == "http"]
    assert {x.get("backend") for x in http if x.get("status") == 200} == {f"agent-{site['id']}"}
    escalations = [x for x in lines if x.get("api") == "grpc" and x.get("outcome") == "ok"]
    assert {x["site"] for x in escalations} >= {"sub-durham-03", "store-0117"}
    assert [x for x in lines if x.get("api") == "grpc" and x.get("site") == site["id"]] == []


def test_a_question_answered_at_one_site_is_answered_from_the_cache_at_another(
    fleet: Fleet, traffic: dict[str, Any]
) -> None:
    """Durham escalates a question; York, same tenant, asked the same about the same image,
    gets the cloud's answer from the shared cache (its agent asks before running its model),
    and no image byte crosses its uplink."""
    e = fleet.endpoints
    sites = {s["id"]: s for s in e["sites"]}
    durham, york = sites["sub-durham-03"], sites["sub-york-02"]
    key = e["api_keys"][durham["tenant"]]
    q = fleet_question("substation", 3000)  # asked nowhere else in this run
    first = _ask(durham["url"], key, q.image, q.question)
    assert first["status"] == 200, first
    assert first["served_by"] == "cloud", first

    def uploaded() -> float:
        return metric(e["router_http"], "fleetvl_router_image_bytes_received_total", api="grpc")

    before = uploaded()
    hits = metric(york["url"], "fleetvl_edge_cache_probes_total", outcome="hit")
    # The cloud worker writes the answer after sending it: a moment may pass.
    second = wait_for(lambda: (r := _ask(york["url"], key, q.image, q.question))
                      ["served_by"] == "cache" and r, 20, "York served from the cache")  # fmt: skip
    assert second["text"] == first["text"]
    assert metric(york["url"], "fleetvl_edge_cache_probes_total", outcome="hit") > hits
    assert uploaded() == before  # no image bytes crossed York's uplink


def test_status_page_lists_every_site_healthy(fleet: Fleet, traffic: dict[str, Any]) -> None:
    e = fleet.endpoints
    st = httpx.get(e["controller_http"] + "/api/status",
                   headers={"Authorization": f"Bearer {e['admin_token']}"}).json()  # fmt: skip
    spec = yaml.safe_load((ROOT / "examples" / "fleet.yaml").read_text())
    assert {s["id"] for s in st["sites"]} == {s["id"] for s in spec["sites"]}
    assert all(s["healthy"] for s in st["sites"]), st["sites"]
    page = httpx.get(e["status_page"])
    assert page.status_code == 200
    assert all(s["id"] in page.text for s in spec["sites"])


def test_a_broken_camera_is_refused_counted_and_alerted(
    fleet: Fleet, traffic: dict[str, Any]
) -> None:
    """A noise frame (a camera whose feed broke) at a site agent comes back unanswerable with
    its reason; the agent counts it for its source; a run of them becomes a health alert on
    the controller's status page and admin API; a fleet question at the same site is still
    answered."""
    import io

    import numpy as np
    from PIL import Image

    e = fleet.endpoints
    site = next(s for s in e["sites"] if s["id"] == "sub-york-02")
    key = e["api_keys"][site["tenant"]]

    def noise(i: int) -> bytes:
        rng = np.random.default_rng(i)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (168, 168, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    first = _ask(site["url"], key, noise(0), "What does the gauge read?", source="cam-3")
    assert first["status"] == 200, first
    assert first["verdict"] == "unanswerable"
    assert first["text"] is None
    assert first["refusal"].startswith("unanswerable:")
    assert first["out_of_scope"]["part"] in ("camera", "vision")
    assert metric(site["url"], "fleetvl_edge_unanswerable_total", source="cam-3") == 1
    for i in range(1, 21):
        r = _ask(site["url"], key, noise(i), "Is breaker 2 open or closed?", source="cam-3")
        assert r["verdict"] == "unanswerable", r
    # The same camera then sends four good frames: answered, and the window is 21 of 25.
    good = [fleet_question(site["kind"], 1100 + i) for i in range(4)]
    answers = [_ask(site["url"], key, q.image, q.question, source="cam-3") for q in good]
    assert [a["verdict"] for a in answers] == ["answer"] * 4
    assert sum(answer_matches(a["text"] or "", q.expected)
               for a, q in zip(answers, good, strict=True)) >= 3  # fmt: skip
    auth = {"Authorization": f"Bearer {e['admin_token']}"}
    want = "source cam-3 at sub-york-02: 21 of the last 25 frames out of scope"

    def alerted() -> list[dict[str, Any]]:
        got = httpx.get(e["controller_http"] + "/v1/alerts", headers=auth).json()["alerts"]
        # The alert may first show an earlier heartbeat's count (raised while the noise frames
        # were still coming): wait for the heartbeat that reports all 25.
        return [a for a in got if a["source"] == "cam-3" and a["site"] == "sub-york-02"
                and a["message"].startswith(want)]  # fmt: skip

    alert = wait_for(alerted, 30, "the controller's out-of-scope alert, 21 of 25")[0]
    assert alert["kind"] == "out_of_scope", alert
    assert want in httpx.get(e["status_page"]).text


def test_demo_command_reports_per_site(fleet: Fleet, traffic: dict[str, Any],
                                       tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "demo.json"
    r = subprocess.run(
        [sys.executable, "-m", "fleetvl_tools.cli", "demo", "--config", str(fleet.config),
         "--per-site", "2", "--burst", "4", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert set(report["sites"]) == {s["id"] for s in fleet.endpoints["sites"]}
    assert report["overall"]["requests"] == sum(s["requests"] for s in report["sites"].values())
    assert "overall" in r.stdout
    assert "refusals" in r.stdout
    # The trained models' answers are graded: accuracy overall and by who served them.
    overall = report["overall"]
    assert "accuracy (exact answer): overall" in r.stdout
    assert overall["graded"] == overall["answered"] > 0  # every answer is graded
    edge = overall["accuracy_by"]["edge"]
    assert edge["graded"] >= 8
    assert edge["accuracy"] >= DEMO_EDGE_ACCURACY, overall["accuracy_by"]


def test_ctrl_c_stops_every_process(fleet: Fleet, traffic: dict[str, Any]) -> None:
    """Last: Ctrl-C (SIGINT) ends `fleetvl up` with status 0 and nothing it started is left."""
    pids = [p for p in fleet.endpoints["pids"].values() if p]
    assert len(pids) >= 9  # redis, ray, controller, router, 5 agents, serve run
    fleet.proc.send_signal(signal.SIGINT)
    assert fleet.proc.wait(90) == 0, fleet.output()[-3000:]
    wait_for(lambda: _groups_alive(pids) == [], 10, "every child process group to be gone")
    assert not (Path(fleet.endpoints["logs"]).parent / "endpoints.json").exists()
    assert "stopped." in fleet.output()
    # Ray's session folder of this run is removed with it.
    assert not (
        Path(tempfile.gettempdir()) / f"fleetvl-up-ray-{fleet.endpoints['base_port']}"
    ).exists()
