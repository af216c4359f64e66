"""The real `lxc` 5.0.2 and pylxd 2.4 against the daemon's certificate API: `lxc config trust add`
prints a token, a second `lxc` config joins with `lxc remote add <name> <token>`, and
list/list-tokens/revoke-token/remove behave as against LXD."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pylxd
import pytest

from lab.daemon import shutdown_daemon, start_daemon
from lxdproxy.api.tls import TrustStore, generate_self_signed
from lxdproxy.cli import main

pytestmark = [pytest.mark.lab, pytest.mark.lxc]

LXC = shutil.which("lxc")
ADDRESS = "127.0.0.1:8443"


def test_lxc_token_flow_trust_list_and_remove(lab, tmp_path: Path, capsys) -> None:
    if LXC is None:
        pytest.skip("needs the lxc client (apt lxd-client)")
    proc, sock = start_daemon(lab, tmp_path, "--https", ADDRESS)
    state = tmp_path / "st"
    try:
        inst = lab.add_instance()
        assert main(["instance", "add", "c1", "--pid", str(inst.pid), "--socket", sock]) == 0

        def lxc(conf: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
            (tmp_path / conf).mkdir(exist_ok=True)
            # The admin talks over the unix socket (`local:`), the others over HTTPS.
            env = {**os.environ, "LXD_CONF": str(tmp_path / conf), "LXD_SOCKET": sock}
            return lab.host.run([LXC, *args], check=False, env=env, text=True, input=stdin)

        added = lxc("admin", "config", "trust", "add", "--name", "laptop")
        assert added.returncode == 0, added.stderr
        header, token = added.stdout.splitlines()
        assert header == "Client laptop certificate add token:"
        tokens = lxc("admin", "config", "trust", "list-tokens", "--format", "csv")
        assert tokens.stdout == f"laptop,{token},\n"

        joined = lxc("laptop", "remote", "add", "shim", token)
        assert joined.returncode == 0, joined.stderr
        listed = lxc("laptop", "list", "shim:", "--format", "csv", "-c", "n")
        assert (listed.returncode, listed.stdout) == (0, "c1\n"), listed.stderr
        assert lxc("admin", "config", "trust", "list-tokens", "--format", "csv").stdout == ""
        laptop_fp = TrustStore(state).list()[0].fingerprint
        trust = lxc("admin", "config", "trust", "list", "--format", "csv")
        (row,) = trust.stdout.splitlines()
        assert row.startswith("client,laptop,")
        assert f",{laptop_fp[:12]}," in row

        shown = lxc("admin", "config", "trust", "show", laptop_fp[:12])
        assert "name: laptop\n" in shown.stdout and f"fingerprint: {laptop_fp}" in shown.stdout
        edited = lxc("admin", "config", "trust", "edit", laptop_fp,
                     stdin=shown.stdout.replace("name: laptop", "name: laptop2"))
        assert edited.returncode == 0, edited.stderr
        assert TrustStore(state).get(laptop_fp).name == "laptop2"
        refused = lxc("admin", "config", "trust", "edit", laptop_fp,
                      stdin=shown.stdout.replace("restricted: false", "restricted: true"))
        assert refused.stderr.strip().endswith("Restricted certificates are not supported by "
                                               "lxdproxy: it cannot limit a client to projects")

        # Single use: the same token again is refused, and nothing is trusted.
        again = lxc("replay", "remote", "add", "shim", token)
        assert again.returncode == 1
        assert again.stderr.strip().splitlines()[-1] == ("Error: Failed to create certificate: No matching "
                                        "certificate add operation found")
        assert len(TrustStore(state).list()) == 1

        # A token can be revoked before anyone uses it.
        assert lxc("admin", "config", "trust", "add", "--name", "tablet").returncode == 0
        revoked = lxc("admin", "config", "trust", "revoke-token", "tablet")
        assert revoked.stdout == "Certificate add token for tablet deleted\n", revoked.stderr
        assert lxc("admin", "config", "trust", "list-tokens", "--format", "csv").stdout == ""

        # A certificate file, then `remove` by prefix: the laptop is locked out at once.
        assert lxc("admin", "config", "trust", "add",
                   str(tmp_path / "replay" / "client.crt")).returncode == 0
        names = {e.name for e in TrustStore(state).list()}
        assert names == {"laptop2", "client.crt"}
        removed = lxc("admin", "config", "trust", "remove", laptop_fp[:16])
        assert removed.returncode == 0, removed.stderr
        denied = lxc("laptop", "list", "shim:")
        assert denied.returncode == 1 and denied.stderr.strip().endswith("not authorized")
        assert lxc("replay", "remote", "add", "shim", f"https://{ADDRESS}",
                   "--accept-certificate").returncode == 0
        assert lxc("replay", "list", "shim:", "--format", "csv", "-c", "n").stdout == "c1\n"
    finally:
        shutdown_daemon(proc, sock)
    log = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "Traceback" not in log


def test_pylxd_certificates_and_token_authenticate(lab, tmp_path: Path) -> None:
    proc, sock = start_daemon(lab, tmp_path, "--https", ADDRESS)
    try:
        client = pylxd.Client(endpoint=sock)
        crt, key = generate_self_signed("py-user", server=False)
        created = client.certificates.create(password="", cert_data=crt, name="py")
        assert created.name == "py" and created.type == "client"
        (listed,) = client.certificates.all()
        assert listed.fingerprint == created.fingerprint
        got = client.certificates.get(created.fingerprint[:10])
        assert got.certificate == created.certificate
        got.delete()
        assert client.certificates.all() == []

        token = client.certificates.create_token(name="remote-py")
        (tmp_path / "py.crt").write_bytes(crt)
        (tmp_path / "py.key").write_bytes(key)
        script = (
            "import sys, warnings, pylxd\n"
            "warnings.simplefilter('ignore')\n"
            f"c = pylxd.Client(endpoint='https://{ADDRESS}', cert=(sys.argv[1], sys.argv[2]),"
            " verify=False)\n"
            "assert not c.trusted\n"
            "c.authenticate(sys.argv[3])\n"
            "print(c.trusted, [i.name for i in c.instances.all()])\n")
        # requests lets REQUESTS_CA_BUNDLE override verify=False; HOME: no ~/.config/lxc certs.
        pylxd_env = {k: v for k, v in os.environ.items()
                     if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        pylxd_env["HOME"] = str(tmp_path)
        done = lab.host.run([sys.executable, "-c", script, str(tmp_path / "py.crt"),
                             str(tmp_path / "py.key"), token], check=False, text=True,
                            env=pylxd_env)
        assert done.stdout == "True []\n", done.stderr
        (entry,) = TrustStore(tmp_path / "st").list()
        assert entry.name == "remote-py"
    finally:
        shutdown_daemon(proc, sock)


def test_without_https_lxc_lists_and_adds_certificates_over_the_unix_socket(lab, tmp_path: Path) -> None:
    """As LXD without `core.https_address`: the trust store is there over the unix socket; only a
    token, which needs an address to join, is refused (LXD's words)."""
    if LXC is None:
        pytest.skip("needs the lxc client (apt lxd-client)")
    conf = tmp_path / "conf"
    conf.mkdir()
    crt, _key = generate_self_signed("ci-runner", server=False)
    (tmp_path / "ci.crt").write_bytes(crt)
    proc, sock = start_daemon(lab, tmp_path)
    try:
        def lxc(*args: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "LXD_CONF": str(conf), "LXD_SOCKET": sock}
            return lab.host.run([LXC, *args], check=False, env=env, text=True)

        listed = lxc("config", "trust", "list", "--format", "csv")
        assert (listed.returncode, listed.stdout) == (0, ""), listed.stderr
        token = lxc("config", "trust", "add", "--name", "laptop")
        assert token.returncode == 1
        assert token.stderr.strip() == "Error: Can't issue token when server isn't listening on network"
        added = lxc("config", "trust", "add", str(tmp_path / "ci.crt"))
        assert added.returncode == 0, added.stderr
        (row,) = lxc("config", "trust", "list", "--format", "csv").stdout.splitlines()
        assert row.startswith("client,ci.crt,")
    finally:
        shutdown_daemon(proc, sock)
    log = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "Traceback" not in log
    (entry,) = TrustStore(tmp_path / "st").list()
    assert entry.name == "ci.crt"
