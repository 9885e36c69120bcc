"""Control-plane client of the site agent: dial out to the controller, apply what it pushes.

Sites accept no inbound connections, so the agent opens one gRPC stream
(``fleetvl.control.v1.Control/Connect``), registers, heartbeats with metric summaries, and
applies pushed policies, bundle assignments (download, verify the digest, hot-swap) and
commands through a :class:`ControlHandler` implemented by the agent daemon.
"""

from edge_agent.control._client import ControlClient, ControlClientConfig, ControlHandler
from edge_agent.control._download import BundleRefused, fetch_bundle

__all__ = [
    "BundleRefused",
    "ControlClient",
    "ControlClientConfig",
    "ControlHandler",
    "fetch_bundle",
]
