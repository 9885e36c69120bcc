"""The site agent daemon (``fleetvl edge run``): local API, gate, escalation, spool."""

from edge_agent.agent.config import AgentConfig
from edge_agent.agent.control import AgentControl
from edge_agent.agent.main import Agent, serve

__all__ = ["Agent", "AgentConfig", "AgentControl", "serve"]
