"""Site config: YAML, ${VAR} references, FLEETVL_EDGE_* overrides, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.agent.config import AgentConfig


def test_env_overrides_and_references(tmp_path: Path) -> None:
    p = tmp_path / "site.yaml"
    p.write_text(
        "site: s1\nbundle: /b\nrouter: {target: 'r:1', api_key: '${KEY}'}\n"
        "controller: {target: 'c:2', token: t}\n"
    )
    env = {"FLEETVL_EDGE_HTTP_PORT": "9001", "FLEETVL_EDGE_ROUTER__MODEL": "big", "KEY": "secret"}
    cfg = AgentConfig.load(p, environ=env)
    assert cfg.http_port == 9001
    assert cfg.router is not None
    assert cfg.router.api_key == "secret"
    assert cfg.router.model == "big"
    assert cfg.controller is not None
    assert cfg.controller.heartbeat_s == 5.0


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    p = tmp_path / "site.yaml"
    p.write_text("site: s1\nbundle: /b\ngate: {signal: vibes}\n")
    with pytest.raises(ValidationError, match="vibes"):
        AgentConfig.load(p, environ={})
    p.write_text("site: s1\nbundle: /b\nspool: {max_bytes: 5}\n")
    with pytest.raises(ValidationError, match="max_bytes"):
        AgentConfig.load(p, environ={})


def test_the_example_site_config_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = AgentConfig.load(root / "examples" / "site.yaml", environ={})
    assert cfg.site == "sub-north-07"
    assert cfg.policies.site is not None


@pytest.mark.parametrize("source", ["examples/site.yaml", "docs/edge_install.md"])
def test_the_documented_site_configs_load(source: str, tmp_path: Path) -> None:
    """The example file and the install guide's site.yaml are configs the daemon accepts."""
    import re

    text = (Path(__file__).resolve().parents[2] / source).read_text()
    if source.endswith(".md"):
        text = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    p = tmp_path / "site.yaml"
    p.write_text(text)
    environ = {"FLEETVL_EDGE_ROUTER__API_KEY": "k"}
    if "controller:" in text.replace("# controller:", ""):  # the example leaves it commented
        environ["FLEETVL_EDGE_CONTROLLER__TOKEN"] = "t"
    cfg = AgentConfig.load(p, environ=environ)
    assert cfg.site
    assert cfg.bundle
    assert cfg.router is not None
    assert cfg.router.api_key == "k"
