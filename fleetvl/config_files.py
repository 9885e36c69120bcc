"""YAML config files of the services: ``${VAR}`` references expanded from the environment.

Secrets (API keys, tokens) stay out of the files a person edits and commits; the router, the
site agent and the controller read their files the same way.
"""

from __future__ import annotations

import os
from typing import TypeAlias

__all__ = ["JsonObject", "JsonValue", "expand_env"]

#: A value as JSON (or YAML read with ``safe_load``) holds it.
JsonValue: TypeAlias = (
    str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]
)
#: A JSON object.
JsonObject: TypeAlias = dict[str, JsonValue]


def expand_env(value: JsonValue) -> JsonValue:
    """``value`` with ``${VAR}`` expanded in every string, through nested dicts and lists
    (an unset variable stays as written, so validation names it)."""
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value
