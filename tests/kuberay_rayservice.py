"""What KubeRay's operator accepts in a ``ray.io/v1`` ``RayService``, checked without a cluster.

The ``kubernetes`` client has no model for a custom resource, and KubeRay's CRD (tens of
thousands of lines of OpenAPI, mostly the embedded pod template) is not packaged on any
registry we can reach. So a RayService is checked in three layers:

1. its own fields, with a JSON schema transcribed from KubeRay's Go types
   (``ray-operator/apis/ray/v1/rayservice_types.go`` and ``raycluster_types.go``, v1.1-v1.4:
   ``RayServiceSpec``, ``RayClusterSpec``, ``HeadGroupSpec``, ``WorkerGroupSpec``,
   ``AutoscalerOptions``) with unknown fields refused, as the API server prunes them;
2. the embedded Kubernetes types (pod templates, ``serveService``) by the ``kubernetes``
   client's own models (:func:`k8s_roundtrip`), exactly like the chart's built-in kinds;
3. ``serveConfigV2`` by Ray Serve's own config model, ``ray.serve.schema.ServeDeploySchema``,
   which is what the Serve controller validates it with when KubeRay submits it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["RAYSERVICE_SCHEMA", "k8s_roundtrip"]

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJ = {"type": "object"}

_AUTOSCALER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "resources": _OBJ,
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "env": {"type": "array"},
        "envFrom": {"type": "array"},
        "volumeMounts": {"type": "array"},
        "securityContext": _OBJ,
        "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
    },
}

_HEAD = {
    "type": "object",
    "additionalProperties": False,
    "required": ["template"],
    "properties": {
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "headService": _OBJ,
        "enableIngress": {"type": "boolean"},
        # map[string]string: `ray start` flags must be strings ("0", not 0).
        "rayStartParams": _STR_MAP,
        "template": _OBJ,
    },
}

_WORKER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "template"],
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "numOfHosts": {"type": "integer", "minimum": 1},
        "rayStartParams": _STR_MAP,
        "template": _OBJ,
        "scaleStrategy": _OBJ,
        "suspend": {"type": "boolean"},
    },
}

RAYSERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                # A YAML document as a string, not a nested object.
                "serveConfigV2": {"type": "string", "minLength": 1},
                "serveService": _OBJ,
                "upgradeStrategy": _OBJ,
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
                "rayClusterConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["headGroupSpec"],
                    "properties": {
                        "headGroupSpec": _HEAD,
                        "workerGroupSpecs": {"type": "array", "items": _WORKER},
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": _AUTOSCALER,
                        "headServiceAnnotations": _STR_MAP,
                        "suspend": {"type": "boolean"},
                    },
                },
            },
        },
    },
}


def _stringify(v: Any) -> Any:
    # The client types quantities and int-or-string fields loosely (1 becomes "1"): compare
    # structure and values as text, so a dropped or misspelt field still shows up.
    if isinstance(v, dict):
        return {k: _stringify(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_stringify(x) for x in v]
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def k8s_roundtrip(obj: dict[str, Any], model: str) -> tuple[Any, Any, Any]:
    """Parse ``obj`` into the client's ``model`` (e.g. ``V1Deployment``) and serialize it back.

    Returns ``(parsed model, original as text, round-tripped as text)``: the two must be
    equal, because the client silently drops fields its model does not have (a misspelt
    ``readinesProbe`` would vanish here, as the API server would prune it). A missing required
    field or a wrongly typed value raises the model's ``ValueError`` (pydantic's
    ``ValidationError``) naming the field.
    """
    from kubernetes.client import ApiClient

    client = ApiClient()
    parsed = client.deserialize(json.dumps(obj), model, "application/json")
    back = client.sanitize_for_serialization(parsed)
    return parsed, _stringify(obj), _stringify(back)
