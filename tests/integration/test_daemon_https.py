"""``serve --https``: a trusted client certificate sees everything (the real ``lxc`` over an
https remote, run inside lab.host); an untrusted client sees only ``GET /1.0`` and 403s."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab.daemon import LXDPROXY, NFT_TABLE, shutdown_daemon
from lab.traffic import roundtrip
from lxdproxy.api.tls import TrustStore, generate_self_signed

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(shutil.which("lxc") is None, reason="lxc client not installed")]

HOST = "198.18.0.1"


def test_https_trust_and_lxc_remote(lab: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    conf = tmp_path / "lxc-conf"
    conf.mkdir()
    crt, key = generate_self_signed("tester", server=False)
    (conf / "client.crt").write_bytes(crt)
    (conf / "client.key").write_bytes(key)
    state.mkdir()
    TrustStore(state).add(crt, name="tester")

    proc = lab.host.popen([str(LXDPROXY), "serve", "--state-dir", str(state), "--nft-table",
                           NFT_TABLE, "--https", f"{HOST}:8443"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"lxdproxy: listening on")
        assert proc.stdout.readline().strip() == f"lxdproxy: listening on https://{HOST}:8443".encode()

        def curl(path: str) -> tuple[int, dict[str, Any]]:
            out = lab.host.run(["curl", "-sk", "-w", "\n%{http_code}",
                                f"https://{HOST}:8443{path}"]).stdout.decode()
            body, _, code = out.rpartition("\n")
            return int(code), json.loads(body)

        code, body = curl("/1.0")
        assert code == 200 and body["metadata"]["auth"] == "untrusted"
        assert "environment" not in body["metadata"]
        code, body = curl("/1.0/instances")
        assert (code, body["error"], body["type"]) == (403, "not authorized", "error")
        code, body = curl("/1.0/metrics")
        assert (code, body["error"]) == (403, "not authorized")
        # A trusted client gets the metrics (Prometheus is configured with a trusted cert).
        scraped = lab.host.run(["curl", "-sSk", "--cert", str(conf / "client.crt"), "--key",
                                str(conf / "client.key"), f"https://{HOST}:8443/1.0/metrics"])
        assert b"# TYPE lxdproxy_process_open_fds gauge" in scraped.stdout

        inst = lab.add_instance()
        lab.echo(inst, "tcp", "127.0.0.1", 9000)
        reg = {"name": "c1", "source": {"type": "none"},
               "config": {"user.lxdproxy.pid": str(inst.pid)}}
        subprocess.run(["curl", "-sS", "--unix-socket", str(state / "unix.socket"), "-d",
                        json.dumps(reg), "http://lxd/1.0/instances"], check=True,
                       capture_output=True)

        env = {"LXD_CONF": str(conf), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
               "HOME": str(tmp_path)}

        def lxc(*args: str) -> str:
            done = lab.host.run(["lxc", *args], env=env, check=False)
            assert done.returncode == 0, done.stderr.decode()
            return done.stdout.decode()

        lxc("remote", "add", "shim", f"https://{HOST}:8443", "--accept-certificate")
        lxc("config", "device", "add", "shim:c1", "web", "proxy", f"listen=tcp:{HOST}:7400",
            "connect=tcp:127.0.0.1:9000")
        assert roundtrip(lab.host, HOST, 7400) == b"ping"
        assert "listen: tcp:198.18.0.1:7400" in lxc("config", "device", "show", "shim:c1")
    finally:
        assert shutdown_daemon(proc, state / "unix.socket") == 0
