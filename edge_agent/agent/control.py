"""The running agent as the control plane sees it (the ``ControlHandler`` of
``edge_agent.control``): pushed policies, bundle hot-swap, commands, a metrics summary.

The control-plane client calls these from its own task on the agent's event loop, and
:meth:`source_health` once per heartbeat (the per-source out-of-scope report);
:meth:`install_bundle` and :meth:`run_command` are synchronous by contract, so they schedule
the work on the loop when called from it and wait for it when called from another thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
from collections.abc import Coroutine
from pathlib import Path

from edge_agent.agent.service import AgentService
from edge_agent.agent.source_health import SourceStatus
from fleetvl.policy import PolicyOverride, SlaPolicy

__all__ = ["AgentControl"]

log = logging.getLogger("fleetvl.edge")


class AgentControl:
    def __init__(
        self,
        service: AgentService,
        loop: asyncio.AbstractEventLoop,
        state_file: Path | None = None,
    ) -> None:
        self.service = service
        self.loop = loop
        # The last pushed policy layers, kept on disk: an agent restarted while the
        # controller is away serves what the controller last said, not its file's defaults.
        self.state_file = state_file
        self._lock = threading.Lock()
        self._samples: list[tuple[float, bool, str, bool]] = []  # ms, ok, served_by, met SLA
        self.swaps: list[asyncio.Future[None]] = []
        # Archive address of the running bundle: the controller's name for it. Set by the
        # daemon at start (computed from the bundle directory) and by every install.
        self.archive_digest = ""

    # -- what the service reports ----------------------------------------------------------

    def record(self, total_ms: float, ok: bool, served_by: str, met: bool) -> None:
        """One finished request: ``served_by`` edge | cloud | cache | queued | none (failed)."""
        with self._lock:
            self._samples.append((total_ms, ok, served_by, met))

    # -- ControlHandler ---------------------------------------------------------------------

    def apply_policies(self, policies: dict[str, dict[str, object]]) -> None:
        """Replace the site's SLA layers (``{"global": {...}, "tenant": {...}, "site": {...}}``
        in :mod:`fleetvl.policy` field names); a missing layer keeps the current one.

        Raises:
            pydantic.ValidationError: a layer is invalid; nothing is changed then.
        """
        cur = self.service.layers
        g = SlaPolicy.model_validate(policies["global"]) if "global" in policies else cur.global_
        t = PolicyOverride.model_validate(policies["tenant"]) if policies.get("tenant") else (
            None if "tenant" in policies else cur.tenant)  # fmt: skip
        s = PolicyOverride.model_validate(policies["site"]) if policies.get("site") else (
            None if "site" in policies else cur.site)  # fmt: skip
        self.service.set_policies(g, t, s)
        if self.state_file is not None:
            self._save(policies)

    def _save(self, policies: dict[str, dict[str, object]]) -> None:
        assert self.state_file is not None
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(policies, sort_keys=True))
        os.replace(tmp, self.state_file)  # never a half-written file after a crash

    def restore(self) -> bool:
        """Apply the policy layers last pushed (before the controller is reached); False when
        none were kept or the file does not validate (the config's layers stay)."""
        if self.state_file is None or not self.state_file.exists():
            return False
        try:
            saved = json.loads(self.state_file.read_text())
            self.apply_policies(saved)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("kept policies in %s not applied: %s", self.state_file, exc)
            return False
        return True

    def install_bundle(self, bundle_dir: Path, digest: str) -> None:
        """Hot-swap the engines to ``bundle_dir`` (in-flight requests finish on the old ones).

        ``digest`` is the address of the archive it was unpacked from, which the control
        client has already checked against the downloaded bytes; here the unpacked files are
        checked against the bundle's own manifest before any engine loads them.

        Raises:
            BundleError: the bundle is incomplete or cannot be loaded; the old engines stay
                in service.
        """
        from fleetvl.vlm.bundle_manifest import read_manifest

        read_manifest(Path(bundle_dir), verify="size")
        self._on_loop(self.service.pool.swap(Path(bundle_dir)))
        self.archive_digest = digest

    def run_command(self, name: str, args: dict[str, str]) -> None:
        """``reload`` (re-read the bundle from disk) or ``recalibrate`` (re-read its
        calibration file after ``fleetvl calibrate`` wrote a new one)."""
        if name == "reload":
            self._on_loop(self.service.pool.swap(self.service.pool.bundle))
        elif name == "recalibrate":
            self.service.pool.reload_calibration()
        else:
            raise ValueError(f"unknown command {name!r}; known: reload, recalibrate")

    def summary(self) -> dict[str, float]:
        """Since the last call: requests, errors, escalation_rate, sla_attainment, p95_ms,
        cache_rate (answered from the fleet's answer cache)."""
        with self._lock:
            samples, self._samples = self._samples, []
        n = len(samples)
        if n == 0:
            return {"requests": 0.0, "errors": 0.0, "escalation_rate": 0.0,
                    "sla_attainment": 1.0, "p95_ms": 0.0, "cache_rate": 0.0}  # fmt: skip
        lat = sorted(s[0] for s in samples)
        return {
            "requests": float(n),
            "errors": float(sum(not s[1] for s in samples)),
            "escalation_rate": sum(s[2] in ("cloud", "queued") for s in samples) / n,
            "cache_rate": sum(s[2] == "cache" for s in samples) / n,
            "sla_attainment": sum(s[3] for s in samples) / n,
            "p95_ms": lat[min(n - 1, math.ceil(0.95 * n) - 1)],
        }

    def bundles_held(self) -> list[str]:
        """The running bundle by its archive address (the control plane's name for it)."""
        return [self.archive_digest] if self.archive_digest else []

    def source_health(self) -> list[SourceStatus]:
        """Every image source the service keeps, with its recent out-of-scope verdicts (the
        heartbeat's ``sources``)."""
        return self.service.health.snapshot()

    def _on_loop(self, coro: Coroutine[object, object, None]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            # Called on the agent's loop: cannot block it; the swap runs as a task.
            self.swaps.append(asyncio.ensure_future(coro))
        else:
            asyncio.run_coroutine_threadsafe(coro, self.loop).result()
