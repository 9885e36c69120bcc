"""Test certificates made with the openssl CLI (a CA, a server and a client certificate)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path, client_cn: str = "site-agent") -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate whose
    common name is ``client_cn`` (a controller checks it against the site it registers as)."""
    p = {n: d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem", "cli.key",
                            "cli.csr", "cli.pem", "ext.cnf")}  # fmt: skip
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fleetvl-test-ca",
        "-keyout",
        str(p["ca.key"]),
        "-out",
        str(p["ca.pem"]),
    )
    p["ext.cnf"].write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who, cn in (("srv", "localhost"), ("cli", client_cn)):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            str(p[f"{who}.key"]),
            "-out",
            str(p[f"{who}.csr"]),
        )
        _openssl("x509", "-req", "-in", str(p[f"{who}.csr"]), "-CA", str(p["ca.pem"]),
                 "-CAkey", str(p["ca.key"]), "-CAcreateserial", "-days", "2",
                 "-extfile", str(p["ext.cnf"]), "-out", str(p[f"{who}.pem"]))  # fmt: skip
    return p
