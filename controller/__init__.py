"""Fleet control plane: fleet spec, agent sessions, policy push, staged rollouts, status page.

Run it with ``fleetvl controller run --config controller.yaml`` (see ``docs/controller.md``).
Hard state lives in Redis (``controller.store``); agent sessions are soft state rebuilt from
what agents re-report (``controller.sessions``).
"""

from controller.config import ControllerConfig
from controller.spec import FleetSpec, load_spec

__all__ = ["ControllerConfig", "FleetSpec", "load_spec"]
