"""gRPC keepalive between a site and the router: a hung peer is noticed in seconds.

A router that stops answering (frozen, partitioned behind a NAT that drops the flow) leaves the
agent's streams open; without pings the uplink looks up until a request's whole deadline has
been spent waiting on it. The agent pings every ``interval`` on its uplink and escalation
channels and gives up on the transport after ``interval`` without an answer; the router lets
agents ping that often.
"""

from __future__ import annotations

__all__ = ["client_options", "server_options"]

GrpcOptions = list[tuple[str, int]]


def client_options(interval_s: float) -> GrpcOptions:
    ms = max(int(interval_s * 1000), 100)
    return [
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Without it the client spaces pings on an idle stream by 5 minutes.
        ("grpc.http2.min_time_between_pings_ms", ms),
        # The wait for a ping's ack (gRPC core's own timer, 60 s by default, not the above).
        ("grpc.http2.ping_timeout_ms", ms),
    ]


def server_options(min_interval_s: float = 0.5) -> GrpcOptions:
    """What the router accepts: pings this often, with or without calls, never a strike."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(min_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 0),
    ]
