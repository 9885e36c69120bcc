from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("digest", "data", "mime_type")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    data: bytes
    mime_type: str
    def __init__(self, digest: _Optional[str] = ..., data: _Optional[bytes] = ..., mime_type: _Optional[str] = ...) -> None: ...

class ContentPart(_message.Message):
    __slots__ = ("text", "image")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: Image
    def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: _containers.RepeatedCompositeFieldContainer[ContentPart]
    def __init__(self, role: _Optional[str] = ..., content: _Optional[_Iterable[_Union[ContentPart, _Mapping]]] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "top_logprobs")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    top_logprobs: int
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., top_logprobs: _Optional[int] = ...) -> None: ...

class Sla(_message.Message):
    __slots__ = ("deadline_ms", "ttft_target_ms", "min_confidence", "residency", "priority", "on_uplink_down", "max_output_tokens", "cache", "on_out_of_scope")
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_TARGET_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    RESIDENCY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ON_UPLINK_DOWN_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    ON_OUT_OF_SCOPE_FIELD_NUMBER: _ClassVar[int]
    deadline_ms: float
    ttft_target_ms: float
    min_confidence: float
    residency: str
    priority: str
    on_uplink_down: str
    max_output_tokens: int
    cache: str
    on_out_of_scope: str
    def __init__(self, deadline_ms: _Optional[float] = ..., ttft_target_ms: _Optional[float] = ..., min_confidence: _Optional[float] = ..., residency: _Optional[str] = ..., priority: _Optional[str] = ..., on_uplink_down: _Optional[str] = ..., max_output_tokens: _Optional[int] = ..., cache: _Optional[str] = ..., on_out_of_scope: _Optional[str] = ...) -> None: ...

class OutOfScope(_message.Message):
    __slots__ = ("score", "threshold", "part", "scene")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    score: float
    threshold: float
    part: str
    scene: str
    def __init__(self, score: _Optional[float] = ..., threshold: _Optional[float] = ..., part: _Optional[str] = ..., scene: _Optional[str] = ...) -> None: ...

class EdgeAttempt(_message.Message):
    __slots__ = ("text", "confidence", "signal", "reason", "scope")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    text: str
    confidence: float
    signal: str
    reason: str
    scope: OutOfScope
    def __init__(self, text: _Optional[str] = ..., confidence: _Optional[float] = ..., signal: _Optional[str] = ..., reason: _Optional[str] = ..., scope: _Optional[_Union[OutOfScope, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("request_id", "tenant", "site", "model", "messages", "sampling", "sla", "edge_attempt", "idempotency_key", "source", "budget_ms", "cache_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SLA_FIELD_NUMBER: _ClassVar[int]
    EDGE_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    CACHE_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    site: str
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    sampling: Sampling
    sla: Sla
    edge_attempt: EdgeAttempt
    idempotency_key: str
    source: str
    budget_ms: float
    cache_only: bool
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., site: _Optional[str] = ..., model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., sla: _Optional[_Union[Sla, _Mapping]] = ..., edge_attempt: _Optional[_Union[EdgeAttempt, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., source: _Optional[str] = ..., budget_ms: _Optional[float] = ..., cache_only: _Optional[bool] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("text", "index", "token_prob", "logprob")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_PROB_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    text: str
    index: int
    token_prob: float
    logprob: TokenLogprob
    def __init__(self, text: _Optional[str] = ..., index: _Optional[int] = ..., token_prob: _Optional[float] = ..., logprob: _Optional[_Union[TokenLogprob, _Mapping]] = ...) -> None: ...

class TopLogprob(_message.Message):
    __slots__ = ("token", "logprob")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token", "logprob", "top")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    top: _containers.RepeatedCompositeFieldContainer[TopLogprob]
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ..., top: _Optional[_Iterable[_Union[TopLogprob, _Mapping]]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "cached_images")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    cached_images: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_images: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "ttft_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    ttft_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Final(_message.Message):
    __slots__ = ("text", "finish_reason", "served_by", "backend", "confidence", "confidence_signal", "escalation_reason", "usage", "timings", "replayed", "verdict", "scope")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: str
    served_by: str
    backend: str
    confidence: float
    confidence_signal: str
    escalation_reason: str
    usage: Usage
    timings: Timings
    replayed: bool
    verdict: str
    scope: OutOfScope
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., served_by: _Optional[str] = ..., backend: _Optional[str] = ..., confidence: _Optional[float] = ..., confidence_signal: _Optional[str] = ..., escalation_reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., replayed: _Optional[bool] = ..., verdict: _Optional[str] = ..., scope: _Optional[_Union[OutOfScope, _Mapping]] = ...) -> None: ...

class NeedImages(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("delta", "final", "need_images")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    NEED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    delta: Delta
    final: Final
    need_images: NeedImages
    def __init__(self, delta: _Optional[_Union[Delta, _Mapping]] = ..., final: _Optional[_Union[Final, _Mapping]] = ..., need_images: _Optional[_Union[NeedImages, _Mapping]] = ...) -> None: ...

class AgentHello(_message.Message):
    __slots__ = ("site", "agent_version", "models", "slots")
    SITE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    site: str
    agent_version: str
    models: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    def __init__(self, site: _Optional[str] = ..., agent_version: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ...) -> None: ...

class AgentUp(_message.Message):
    __slots__ = ("hello", "chunk")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    hello: AgentHello
    chunk: CallChunk
    def __init__(self, hello: _Optional[_Union[AgentHello, _Mapping]] = ..., chunk: _Optional[_Union[CallChunk, _Mapping]] = ...) -> None: ...

class CallChunk(_message.Message):
    __slots__ = ("call_id", "chunk", "end", "error_code", "error")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    chunk: GenerateChunk
    end: bool
    error_code: str
    error: str
    def __init__(self, call_id: _Optional[str] = ..., chunk: _Optional[_Union[GenerateChunk, _Mapping]] = ..., end: _Optional[bool] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class AgentCall(_message.Message):
    __slots__ = ("call_id", "request", "timeout_s")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    request: GenerateRequest
    timeout_s: float
    def __init__(self, call_id: _Optional[str] = ..., request: _Optional[_Union[GenerateRequest, _Mapping]] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class AgentCancel(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class AgentDown(_message.Message):
    __slots__ = ("call", "cancel")
    CALL_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    call: AgentCall
    cancel: AgentCancel
    def __init__(self, call: _Optional[_Union[AgentCall, _Mapping]] = ..., cancel: _Optional[_Union[AgentCancel, _Mapping]] = ...) -> None: ...
