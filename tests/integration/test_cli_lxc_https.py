"""The real `lxc` 5.0 client over HTTPS: our server certificate and TLS context, trust decided per
request from the trust store that `lxdproxy config trust` edits."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from lab.daemon import shutdown_daemon, start_daemon
from lxdproxy.api.tls import TrustStore, generate_self_signed
from lxdproxy.cli import main

pytestmark = [pytest.mark.lab, pytest.mark.lxc]

LXC = shutil.which("lxc")


def test_lxc_over_https_with_trust_store(lab, tmp_path, capsys):
    if LXC is None:
        pytest.skip("needs the lxc client (apt lxd-client)")
    conf = tmp_path / "lxc-conf"
    conf.mkdir()
    # lxc would make its own client.crt on `remote add`; we make it first to trust it upfront.
    cert, key = generate_self_signed("lxc-user", server=False)
    (conf / "client.crt").write_bytes(cert)
    (conf / "client.key").write_bytes(key)
    state = tmp_path / "st"
    assert main(["config", "trust", "add", str(conf / "client.crt"),
                 "--state-dir", str(state)]) == 0

    # HTTPS on the lab host's loopback (start_daemon keeps its state in <tmp>/st).
    proc, sock = start_daemon(lab, tmp_path, "--https", "127.0.0.1:8443")
    try:
        inst = lab.add_instance()
        assert main(["instance", "add", "c1", "--pid", str(inst.pid), "--socket", sock]) == 0

        def lxc(*args: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "LXD_CONF": str(conf)}
            return lab.host.run([LXC, *args], check=False, env=env, text=True)

        added = lxc("remote", "add", "shim", "https://127.0.0.1:8443", "--accept-certificate")
        assert added.returncode == 0, added.stderr
        assert (conf / "servercerts" / "shim.crt").read_text() == (
            state / "server.crt").read_text()
        r = lxc("config", "device", "add", "shim:c1", "web", "proxy",
                f"listen=tcp:{lab.host.ipv4}:8080", "connect=tcp:127.0.0.1:80")
        assert r.returncode == 0, r.stderr
        r = lxc("config", "device", "get", "shim:c1", "web", "connect")
        assert r.stdout == "tcp:127.0.0.1:80\n"

        # Untrust it: the very next request is refused, without restarting anything.
        (entry,) = TrustStore(state).list()
        capsys.readouterr()
        assert main(["config", "trust", "remove", entry.fingerprint,
                     "--state-dir", str(state)]) == 0
        r = lxc("config", "device", "show", "shim:c1")
        assert r.returncode == 1
        assert r.stderr.strip().endswith("not authorized")
        info = lxc("info", "shim:")
        assert "auth: untrusted" in info.stdout
    finally:
        shutdown_daemon(proc, sock)
