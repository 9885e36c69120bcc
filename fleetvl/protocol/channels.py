"""One way to open a gRPC client channel, plaintext or TLS from PEM files.

The agent's uplink, escalation and control channels, the router's gRPC backends and its watch
on the controller all open channels the same way; only the files and options differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["ChannelOption", "TlsFiles", "open_channel"]

ChannelOption = tuple[str, str | int]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS channel. No CA: the system's roots; a certificate and key: mTLS.
    ``server_name``: the name the server's certificate carries, when not the target's host."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def open_channel(
    target: str, tls: TlsFiles | None = None, options: Sequence[ChannelOption] = ()
) -> grpc.aio.Channel:
    """An aio channel to ``target``: TLS with ``tls``, plaintext without."""
    opts = list(options)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=opts)
    creds = grpc.ssl_channel_credentials(
        _read(tls.ca_file), _read(tls.key_file), _read(tls.cert_file)
    )
    if tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(target, creds, options=opts)
