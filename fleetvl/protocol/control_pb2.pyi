from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoutingWatch(_message.Message):
    __slots__ = ("router_id",)
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    def __init__(self, router_id: _Optional[str] = ...) -> None: ...

class SiteRoute(_message.Message):
    __slots__ = ("site", "tenant")
    SITE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    site: str
    tenant: str
    def __init__(self, site: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class RoutingState(_message.Message):
    __slots__ = ("version", "policies_json", "sites")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_JSON_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    version: int
    policies_json: str
    sites: _containers.RepeatedCompositeFieldContainer[SiteRoute]
    def __init__(self, version: _Optional[int] = ..., policies_json: _Optional[str] = ..., sites: _Optional[_Iterable[_Union[SiteRoute, _Mapping]]] = ...) -> None: ...

class Hardware(_message.Message):
    __slots__ = ("cpu", "cores", "memory_bytes", "accelerator")
    CPU_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    cpu: str
    cores: int
    memory_bytes: int
    accelerator: str
    def __init__(self, cpu: _Optional[str] = ..., cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., accelerator: _Optional[str] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("site", "agent_version", "bundles_held", "hardware", "active_bundle", "policy_version")
    SITE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_HELD_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    site: str
    agent_version: str
    bundles_held: _containers.RepeatedScalarFieldContainer[str]
    hardware: Hardware
    active_bundle: str
    policy_version: int
    def __init__(self, site: _Optional[str] = ..., agent_version: _Optional[str] = ..., bundles_held: _Optional[_Iterable[str]] = ..., hardware: _Optional[_Union[Hardware, _Mapping]] = ..., active_bundle: _Optional[str] = ..., policy_version: _Optional[int] = ...) -> None: ...

class MetricSummary(_message.Message):
    __slots__ = ("requests", "errors", "escalation_rate", "sla_attainment", "p95_ms", "cache_rate")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_RATE_FIELD_NUMBER: _ClassVar[int]
    SLA_ATTAINMENT_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_RATE_FIELD_NUMBER: _ClassVar[int]
    requests: float
    errors: float
    escalation_rate: float
    sla_attainment: float
    p95_ms: float
    cache_rate: float
    def __init__(self, requests: _Optional[float] = ..., errors: _Optional[float] = ..., escalation_rate: _Optional[float] = ..., sla_attainment: _Optional[float] = ..., p95_ms: _Optional[float] = ..., cache_rate: _Optional[float] = ...) -> None: ...

class SourceHealth(_message.Message):
    __slots__ = ("source", "frames", "out_of_scope", "last_part")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_SCOPE_FIELD_NUMBER: _ClassVar[int]
    LAST_PART_FIELD_NUMBER: _ClassVar[int]
    source: str
    frames: int
    out_of_scope: int
    last_part: str
    def __init__(self, source: _Optional[str] = ..., frames: _Optional[int] = ..., out_of_scope: _Optional[int] = ..., last_part: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("seq", "metrics", "active_bundle", "bundles_held", "sources")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_HELD_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    metrics: MetricSummary
    active_bundle: str
    bundles_held: _containers.RepeatedScalarFieldContainer[str]
    sources: _containers.RepeatedCompositeFieldContainer[SourceHealth]
    def __init__(self, seq: _Optional[int] = ..., metrics: _Optional[_Union[MetricSummary, _Mapping]] = ..., active_bundle: _Optional[str] = ..., bundles_held: _Optional[_Iterable[str]] = ..., sources: _Optional[_Iterable[_Union[SourceHealth, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("push_id", "ok", "error")
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    push_id: str
    ok: bool
    error: str
    def __init__(self, push_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "ack")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    ack: Ack
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("controller_id", "heartbeat_s")
    CONTROLLER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    controller_id: str
    heartbeat_s: float
    def __init__(self, controller_id: _Optional[str] = ..., heartbeat_s: _Optional[float] = ...) -> None: ...

class PolicyPush(_message.Message):
    __slots__ = ("version", "layers_json")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_JSON_FIELD_NUMBER: _ClassVar[int]
    version: int
    layers_json: str
    def __init__(self, version: _Optional[int] = ..., layers_json: _Optional[str] = ...) -> None: ...

class BundleAssignment(_message.Message):
    __slots__ = ("digest", "url", "size", "rollout", "send_credential")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    SEND_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    digest: str
    url: str
    size: int
    rollout: str
    send_credential: bool
    def __init__(self, digest: _Optional[str] = ..., url: _Optional[str] = ..., size: _Optional[int] = ..., rollout: _Optional[str] = ..., send_credential: _Optional[bool] = ...) -> None: ...

class Command(_message.Message):
    __slots__ = ("name", "args")
    class ArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    args: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., args: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("push_id", "welcome", "policies", "bundle", "command")
    PUSH_ID_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    push_id: str
    welcome: Welcome
    policies: PolicyPush
    bundle: BundleAssignment
    command: Command
    def __init__(self, push_id: _Optional[str] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., policies: _Optional[_Union[PolicyPush, _Mapping]] = ..., bundle: _Optional[_Union[BundleAssignment, _Mapping]] = ..., command: _Optional[_Union[Command, _Mapping]] = ...) -> None: ...
