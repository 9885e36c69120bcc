"""One settings convention for every service, and the one list of environment variables.

Every service reads a YAML file into its pydantic model the same way (:func:`load_settings`):

1. the file, with ``${VAR}`` references expanded from the environment;
2. ``FLEETVL_<SERVICE>_<FIELD>`` variables on top, nested fields joined by ``__``
   (``FLEETVL_EDGE_ROUTER__API_KEY``, ``FLEETVL_ROUTER_CONTROLLER__TOKEN``); a variable naming
   no field of the model is an error that says so;
3. ``FLEETVL_REDIS_URL``, the one Redis of a deployment, wherever the model has a Redis URL.

Secrets therefore never need to be in a file a person edits and commits. :data:`ENVIRONMENT`
lists every variable the services read; ``docs/configuration.md`` is written from it
(``python -m fleetvl.settings``) and a test keeps the two the same.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypeVar

if TYPE_CHECKING:  # the cloud engine reads the cache settings on a box without pydantic
    from pydantic import BaseModel

__all__ = [
    "ENVIRONMENT",
    "REDIS_URL",
    "SERVICE_PREFIXES",
    "EnvVar",
    "JsonObject",
    "JsonValue",
    "apply_env",
    "expand_env",
    "load_settings",
]

#: A value as JSON (or YAML read with ``safe_load``) holds it.
JsonValue: TypeAlias = (
    str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]
)
#: A JSON object.
JsonObject: TypeAlias = dict[str, JsonValue]

M = TypeVar("M", bound="BaseModel")

REDIS_URL = "FLEETVL_REDIS_URL"
SERVICE_PREFIXES = {
    "edge": "FLEETVL_EDGE_",
    "router": "FLEETVL_ROUTER_",
    "controller": "FLEETVL_CONTROLLER_",
    "cache": "FLEETVL_CACHE_",
}


@dataclass(frozen=True)
class EnvVar:
    name: str
    read_by: str
    description: str


ENVIRONMENT: tuple[EnvVar, ...] = (
    EnvVar(REDIS_URL, "router, controller, cloud worker, edge-cached engine, fleetvl up",
           "The deployment's one Redis (redis://, rediss:// or unix://, password in the URL): "
           "the shared cache and the controller's hard state. Replaces `redis_url` in every "
           "config."),
    EnvVar("FLEETVL_EDGE_<FIELD>[__<SUB>]", "site agent (fleetvl edge run)",
           "Any field of the agent config (edge_agent/agent/config.py), e.g. "
           "FLEETVL_EDGE_ROUTER__API_KEY (the router API key), FLEETVL_EDGE_CONTROLLER__TOKEN "
           "(the site's controller credential), FLEETVL_EDGE_HTTP_PORT."),
    EnvVar("FLEETVL_ROUTER_<FIELD>[__<SUB>]", "router (fleetvl router run)",
           "Any field of the router config (router/config.py), e.g. "
           "FLEETVL_ROUTER_CONTROLLER__TOKEN (the token it watches the controller with)."),
    EnvVar("FLEETVL_CONTROLLER_<FIELD>[__<SUB>]", "controller (fleetvl controller run)",
           "Any field of the controller config (controller/config.py), e.g. "
           "FLEETVL_CONTROLLER_ADMIN_TOKEN (required: none is ever generated), "
           "FLEETVL_CONTROLLER_ROUTER_TOKEN."),
    EnvVar("FLEETVL_CACHE_<FIELD>", "every user of the shared cache",
           "Any field of fleetvl.cache.CacheConfig, e.g. FLEETVL_CACHE_KV_FORMAT=int8, "
           "FLEETVL_CACHE_OP_TIMEOUT_S=0.2."),
    EnvVar("FLEETVL_UP_BASE_PORT", "fleetvl up",
           "First of the consecutive ports the local fleet listens on (examples/up.yaml)."),
)


_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: JsonValue, environ: Mapping[str, str] | None = None) -> JsonValue:
    """``value`` with ``${VAR}`` expanded in every string, through nested dicts and lists
    (an unset variable stays as written, so validation names it; a bare ``$`` is kept)."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: expand_env(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ) for v in value]
    return value


def _known(model: type[BaseModel], path: list[str]) -> bool:
    """Whether ``path`` (lower-case field names) starts at a field of ``model``."""
    from pydantic import BaseModel
    fields = model.model_fields
    names = dict(fields) | {f.alias: f for f in fields.values() if f.alias}
    field = names.get(path[0])
    if field is None:
        return False
    inner = field.annotation
    sub = [a for a in getattr(inner, "__args__", (inner,)) if isinstance(a, type)]
    models = [a for a in sub if issubclass(a, BaseModel)]
    return len(path) == 1 or not models or any(_known(m, path[1:]) for m in models)


def apply_env(
    raw: JsonObject, model: type[BaseModel], prefix: str, environ: Mapping[str, str]
) -> JsonObject:
    """``raw`` with every ``<prefix><FIELD>[__<SUB>]`` variable set at its field.

    Raises:
        ValueError: a variable with the prefix names no field of ``model``.
    """
    for key in sorted(environ):
        if not key.startswith(prefix):
            continue
        path = key.removeprefix(prefix).lower().split("__")
        if not all(path) or not _known(model, path):
            raise ValueError(f"{key}: the {model.__name__} has no field {'.'.join(path)!r}")
        node = raw
        for p in path[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = node[p] = {}
            node = child
        node[path[-1]] = environ[key]
    return raw


def load_settings(
    model: type[M],
    service: str,
    path: str | Path | None = None,
    *,
    raw: JsonObject | None = None,
    environ: Mapping[str, str] | None = None,
) -> M:
    """A service's settings from ``path`` (or ``raw``) and the environment (module docstring).

    Raises:
        ValueError: the file is not a mapping, a variable names no field, or validation fails
            (pydantic's ``ValidationError`` is a ``ValueError``; it names the field).
    """
    import yaml

    env = os.environ if environ is None else environ
    if raw is None:
        loaded = yaml.safe_load(Path(path).read_text()) if path is not None else {}
        raw = loaded if loaded is not None else {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the {service} config must be a mapping")
    expanded = expand_env(raw, environ)
    assert isinstance(expanded, dict)
    data = apply_env(expanded, model, SERVICE_PREFIXES[service], env)
    if "redis_url" in model.model_fields and (url := env.get(REDIS_URL)):
        data["redis_url"] = url
    return model.model_validate(data)


def environment_doc() -> str:
    """docs/configuration.md's variable table."""
    rows = [f"| `{v.name}` | {v.read_by} | {v.description} |" for v in ENVIRONMENT]
    return "\n".join(["| Variable | Read by | What it sets |", "|---|---|---|", *rows])


if __name__ == "__main__":
    import sys

    sys.stdout.write(environment_doc() + "\n")
