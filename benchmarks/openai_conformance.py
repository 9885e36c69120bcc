"""OpenAI conformance: the stock ``openai`` client against a site agent and the router.

    python benchmarks/openai_conformance.py [--quick] [--json PATH]

Starts a router (its one backend the INT4 fleet-edge bundle in process) and a site agent
serving the same bundle with its uplink to that router, then drives both with the stock
``openai`` client through the calls a user makes, odd but legal ones included: log
probabilities (plain and streamed), the usage chunk of a stream, ``n``, ``stop``, ``seed``,
``max_completion_tokens``, ``response_format``, ``/v1/models``, and the limits every tier must
check before any work with the same status (too many images, a prompt over the context,
an unknown model). Each case says what a user is owed; ``ok`` is whether the tier gave it.

Writes ``cases.<name>.{agent,router}`` = ``{status, ok}`` (what went wrong, where something
did, under ``details.<name>.<tier>``), ``summary.failed`` and
``summary.any_count`` (occurrences of ``Any`` in non-test code: typed boundaries).
``--quick`` runs the same cases (they are cheap) on an untrained quick checkpoint when the
trained models are absent.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._cascade_runs import calibrated_bundle, export_bundles, quick_models  # noqa: E402
from fleetvl_tools.fleetdata import generate  # noqa: E402

CACHE = ROOT / ".cache" / "bench" / "openai_conformance"
MODEL = "fleet"
TIERS = ("agent", "router")
CODE_DIRS = ("fleetvl", "fleetvl_tools", "edge_agent", "router", "cloud_worker", "controller")


@dataclass
class Result:
    status: int
    ok: bool
    detail: str = ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path, url: str) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "fleetvl_tools.cli", *args], stdout=out,
                            stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{args[0]} did not start: {log.read_text()[-2000:]}")


def _wait_uplink(agent: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(agent + "/healthz").json().get("uplink") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the agent's uplink to the router did not come up")
        time.sleep(0.2)


def _image_url(seed: int = 0) -> tuple[str, str, str]:
    """A data URL of a fleet scene, its question and its answer."""
    s = next(iter(generate("heldout", 1, seed=seed)))
    buf = io.BytesIO()
    s.image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), s.question, \
        s.answer  # fmt: skip


def _messages(n_images: int = 1, text: str | None = None) -> list[dict[str, object]]:
    url, question, _ = _image_url()
    parts: list[dict[str, object]] = [
        {"type": "image_url", "image_url": {"url": url}} for _ in range(n_images)
    ]
    parts.append({"type": "text", "text": text or question})
    return [{"role": "user", "content": parts}]


def _status(call: Callable[[], object]) -> tuple[int, object]:
    try:
        return 200, call()
    except openai.APIStatusError as exc:
        return exc.status_code, exc
    except openai.APIError as exc:  # a stream that failed in-band
        return 599, exc


def _error_code(exc: object) -> str:
    body = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else {}
    return str(err.get("code") or err.get("type") or "") if isinstance(err, dict) else ""


# -- the cases ---------------------------------------------------------------------------------


def case_basic(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: c.chat.completions.create(model=MODEL, messages=_messages(),
                                                          max_tokens=8))  # fmt: skip
    ok = status == 200 and isinstance(r.choices[0].message.content, str)  # type: ignore[union-attr]
    return Result(status, ok)


def case_logprobs(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: c.chat.completions.create(
        model=MODEL, messages=_messages(), max_tokens=4, logprobs=True,
        top_logprobs=3))  # fmt: skip
    if status != 200:
        return Result(status, False, str(r)[:200])
    lp = r.choices[0].logprobs  # type: ignore[union-attr]
    toks = lp.content if lp is not None else None
    ok = bool(toks) and all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in toks)
    return Result(status, ok, f"{len(toks or [])} tokens")


def case_logprobs_stream(c: openai.OpenAI) -> Result:
    def run() -> list[object]:
        return list(c.chat.completions.create(
            model=MODEL, messages=_messages(), max_tokens=4, logprobs=True, top_logprobs=2,
            stream=True))  # fmt: skip

    status, chunks = _status(run)
    if status != 200:
        return Result(status, False, str(chunks)[:200])
    choices = [x for ch in chunks for x in ch.choices]  # type: ignore[attr-defined, union-attr]
    toks = [t for x in choices if x.logprobs and x.logprobs.content for t in x.logprobs.content]
    ok = bool(toks) and all(len(t.top_logprobs) == 2 for t in toks)
    return Result(status, ok, f"{len(toks)} tokens")


def case_logprobs_escalated(c: openai.OpenAI) -> Result:
    """Answered by the cloud (the agent escalates everything asked at min_confidence 1.0: the
    log-probabilities come back over gRPC)."""
    status, r = _status(lambda: c.chat.completions.create(
        model=MODEL, messages=_messages(), max_tokens=4, logprobs=True, top_logprobs=1,
        extra_body={"sla": {"min_confidence": 1.0}}))  # fmt: skip
    if status != 200:
        return Result(status, False, str(r)[:200])
    lp = r.choices[0].logprobs  # type: ignore[union-attr]
    served = (r.model_extra or {}).get("fleetvl", {}).get("served_by")  # type: ignore[union-attr]
    toks = lp.content if lp is not None else None
    ok = bool(toks) and served == "cloud" and all(len(t.top_logprobs) == 1 for t in toks)
    return Result(status, ok, f"served_by={served}, {len(toks or [])} tokens")


def case_include_usage(c: openai.OpenAI) -> Result:
    def run() -> list[object]:
        return list(c.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=4,
                                              stream=True,
                                              stream_options={"include_usage": True}))  # fmt: skip

    status, chunks = _status(run)
    if status != 200:
        return Result(status, False, str(chunks)[:200])
    last = chunks[-1]  # type: ignore[index]
    ok = last.usage is not None and last.choices == [] and last.usage.completion_tokens >= 1
    return Result(status, ok, f"usage={last.usage}")


def case_n2(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: c.chat.completions.create(model=MODEL, messages=_messages(),
                                                          max_tokens=4, n=2))  # fmt: skip
    if status == 200:  # supported: two choices
        return Result(status, len(r.choices) == 2)  # type: ignore[union-attr]
    return Result(status, status == 400 and "n" in str(r), str(r)[:160])


def case_stop(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: c.chat.completions.create(
        model=MODEL, messages=_messages(), max_tokens=8, stop=["\n", "zz"]))  # fmt: skip
    ok = status == 200 and "zz" not in (r.choices[0].message.content or "")  # type: ignore[union-attr]
    return Result(status, ok)


def case_seed(c: openai.OpenAI) -> Result:
    def ask() -> object:
        return c.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=6,
                                         temperature=1.0, seed=1234)  # fmt: skip

    s1, a = _status(ask)
    s2, b = _status(ask)
    if s1 != 200 or s2 != 200:
        return Result(s1 if s1 != 200 else s2, False, str(a if s1 != 200 else b)[:200])
    same = a.choices[0].message.content == b.choices[0].message.content  # type: ignore[attr-defined]
    return Result(200, same, "same text" if same else "different text")


def case_max_completion_tokens(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: c.chat.completions.create(
        model=MODEL, messages=_messages(text="Describe the image in detail."),
        max_completion_tokens=2))  # fmt: skip
    if status != 200:
        return Result(status, False, str(r)[:200])
    used = r.usage.completion_tokens if r.usage else 99  # type: ignore[union-attr]
    return Result(status, used <= 2, f"completion_tokens={used}")


def case_response_format_text(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: c.chat.completions.create(
        model=MODEL, messages=_messages(), max_tokens=4,
        response_format={"type": "text"}))  # fmt: skip
    return Result(status, status == 200, "" if status == 200 else str(r)[:200])


def case_response_format_json(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: c.chat.completions.create(
        model=MODEL, messages=_messages(), max_tokens=4,
        response_format={"type": "json_object"}))  # fmt: skip
    if status == 200:  # supported: the content parses
        try:
            json.loads(r.choices[0].message.content or "")  # type: ignore[union-attr]
            return Result(status, True)
        except ValueError:
            return Result(status, False, "content is not JSON")
    return Result(status, status == 400 and "response_format" in str(r), str(r)[:160])


def case_models(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: [m.id for m in c.models.list()])
    return Result(status, status == 200 and MODEL in r, str(r)[:160])  # type: ignore[operator]


def case_too_many_images(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: c.chat.completions.create(
        model=MODEL, messages=_messages(n_images=12), max_tokens=4))  # fmt: skip
    return Result(status, status == 400 and "image" in str(r), str(r)[:160])


def case_context_length_exceeded(c: openai.OpenAI) -> Result:
    text = "word " * 240_000  # 1.2 MB of text
    status, r = _status(lambda: c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=4))  # fmt: skip
    code = _error_code(r)
    return Result(status, status == 400 and code == "context_length_exceeded", f"code={code}")


def case_unknown_model(c: openai.OpenAI) -> Result:
    status, r = _status(lambda: c.chat.completions.create(
        model="no-such-model", messages=_messages(), max_tokens=4))  # fmt: skip
    code = _error_code(r)
    return Result(status, status == 404 and code == "model_not_found", f"code={code}")


CASES: dict[str, Callable[[openai.OpenAI], Result]] = {
    name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")
}


def any_count() -> int:
    """Occurrences of the name ``Any`` in non-test Python code (generated stubs excluded)."""
    pattern = re.compile(r"\bAny\b")
    n = 0
    for d in CODE_DIRS:
        for path in (ROOT / d).rglob("*.py"):
            if "_pb2" not in path.name:
                n += sum(len(pattern.findall(line)) for line in path.read_text().splitlines())
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="untrained models when none ship")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    edge_hf = ROOT / "models" / "fleet-edge"
    if not (edge_hf / "config.json").exists():
        if not args.quick:
            print("error: no trained models (see models/README.md); or run --quick",
                  file=sys.stderr)  # fmt: skip
            return 2
        edge_hf, _ = quick_models(CACHE)
    # Calibrated as a site calibrates it (on a small calib split): the agent then maps
    # min_confidence 1.0 to "escalate everything".
    bundle = calibrated_bundle(export_bundles(edge_hf, ["int4"], CACHE)["int4"], 200, CACHE)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        http, grpc_port, agent_port = _free_port(), _free_port(), _free_port()
        (tmp / "router.yaml").write_text(yaml.safe_dump({
            "http_port": http, "grpc_port": grpc_port,
            "backends": [{"name": "cloud", "type": "engine", "bundle": str(bundle),
                          "models": [MODEL], "slots": 1},
                         # The site's own connection (its uplink is "up" once it is in).
                         {"name": "site", "type": "agent", "site": "conformance", "slots": 1}],
        }))  # fmt: skip
        (tmp / "agent.yaml").write_text(yaml.safe_dump({
            "site": "conformance", "bundle": str(bundle), "model": MODEL, "http_port": agent_port,
            "spool": {"path": str(tmp / "spool.sqlite")},
            "router": {"target": f"127.0.0.1:{grpc_port}", "model": MODEL},
            "policies": {"global": {"deadline_ms": 20000}},
        }))  # fmt: skip
        urls = {"router": f"http://127.0.0.1:{http}", "agent": f"http://127.0.0.1:{agent_port}"}
        procs = [_start(["router", "run", "--config", str(tmp / "router.yaml")],
                        tmp / "router.log", urls["router"])]  # fmt: skip
        try:
            procs.append(_start(["edge", "run", "--config", str(tmp / "agent.yaml")],
                                tmp / "agent.log", urls["agent"]))  # fmt: skip
            _wait_uplink(urls["agent"])
            clients = {t: openai.OpenAI(base_url=urls[t] + "/v1", api_key="unused", timeout=60,
                                        max_retries=0) for t in TIERS}  # fmt: skip
            cases: dict[str, dict[str, dict[str, object]]] = {}
            details: dict[str, dict[str, str]] = {}
            for name, fn in CASES.items():
                cases[name], details[name] = {}, {}
                for tier in TIERS:
                    r = fn(clients[tier])
                    cases[name][tier] = {"status": r.status, "ok": r.ok}
                    details[name][tier] = r.detail
                print(f"{name:28} " + "  ".join(
                    f"{t}: {cases[name][t]['status']} {'ok' if cases[name][t]['ok'] else 'FAIL'}"
                    for t in TIERS), flush=True)  # fmt: skip
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    failed = sum(not v["ok"] for c in cases.values() for v in c.values())
    res = {"config": {"quick": args.quick, "model": str(edge_hf), "tiers": list(TIERS)},
           "cases": cases, "details": details,
           "summary": {"cases": len(cases), "checks": len(cases) * len(TIERS), "failed": failed,
                       "any_count": any_count()},
           "wall_seconds": time.perf_counter() - t0}  # fmt: skip
    print(f"\nfailed: {failed} of {len(cases) * len(TIERS)}; Any in non-test code: "
          f"{res['summary']['any_count']}")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
