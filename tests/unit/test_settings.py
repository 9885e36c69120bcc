"""One settings convention: every service reads its file, FLEETVL_<SERVICE>_* and the one
FLEETVL_REDIS_URL the same way, and a variable naming no field is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import ControllerConfig
from edge_agent.agent.config import AgentConfig
from fleetvl.cache import CacheConfig
from fleetvl.settings import environment_doc
from router.config import RouterConfig

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://redis.fleet:6379/2"


def test_every_service_takes_the_same_redis_variable_and_its_own_prefix(tmp_path: Path) -> None:
    router_yaml = tmp_path / "router.yaml"
    router_yaml.write_text(
        "backends: [{name: c, type: simulated}]\n"
        "controller: {target: 'ctl:50061', token: from-file}\nredis_url: redis://old:1/0\n"
    )
    env = {"FLEETVL_REDIS_URL": REDIS, "FLEETVL_ROUTER_CONTROLLER__TOKEN": "s3cret",
           "FLEETVL_ROUTER_HTTP_PORT": "9090", "FLEETVL_CONTROLLER_ADMIN_TOKEN": "adm",
           "FLEETVL_EDGE_ROUTER__API_KEY": "sk-site", "FLEETVL_CACHE_KV_FORMAT": "int8",
           "FLEETVL_CACHE_OP_TIMEOUT_S": "0.2"}  # fmt: skip
    router = RouterConfig.load(router_yaml, environ=env)
    assert router.redis_url == REDIS
    assert router.http_port == 9090
    assert router.controller is not None
    assert router.controller.token.get_secret_value() == "s3cret"
    ctl = ControllerConfig.load(ROOT / "examples" / "controller.yaml", env)
    assert ctl.redis_url == REDIS
    assert ctl.admin_token.get_secret_value() == "adm"
    agent = AgentConfig.load(ROOT / "examples" / "site.yaml", environ=env)
    assert agent.router is not None
    assert agent.router.api_key == "sk-site"
    cache = CacheConfig.from_env(env)
    assert (cache.url, cache.kv_format, cache.op_timeout_s) == (REDIS, "int8", 0.2)


@pytest.mark.parametrize(
    ("load", "var"),
    [
        (lambda p, env: RouterConfig.load(p, environ=env), "FLEETVL_ROUTER_HTTP_PROT"),
        (lambda p, env: RouterConfig.load(p, environ=env), "FLEETVL_ROUTER_CONTROLLER__TOKN"),
        (lambda p, env: AgentConfig.load(p, environ=env), "FLEETVL_EDGE_ROUTR__API_KEY"),
        (lambda p, env: CacheConfig.from_env(env), "FLEETVL_CACHE_TIMEOUT_S"),
    ],
)
def test_a_misspelt_variable_is_an_error_that_names_it(load, var: str, tmp_path: Path) -> None:  # noqa: ANN001
    p = tmp_path / "c.yaml"
    p.write_text(
        "site: s\nbundle: /b\n" if "EDGE" in var else "backends: [{name: c, type: simulated}]\n"
    )
    with pytest.raises(ValueError, match=var):
        load(p, {var: "1"})


def test_the_configuration_doc_lists_every_variable() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert environment_doc() in doc, "regenerate the table: python -m fleetvl.settings"


@pytest.mark.parametrize("model", [RouterConfig, ControllerConfig, AgentConfig])
def test_every_config_field_is_described(model: type) -> None:
    """An operator reads what a field does in the model (and the JSON schema) itself."""
    from pydantic import BaseModel

    seen: set[type] = set()
    missing: list[str] = []

    def walk(m: type[BaseModel], where: str) -> None:
        if m in seen or not m.__module__.startswith(("router", "controller", "edge_agent")):
            return
        seen.add(m)
        for name, f in m.model_fields.items():
            if not f.description:
                missing.append(f"{where}.{name}")
            for sub in getattr(f.annotation, "__args__", (f.annotation,)):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    walk(sub, f"{where}.{name}")

    walk(model, model.__name__)
    assert not missing, missing
