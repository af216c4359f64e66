"""Every command block of README.md, run as written in the lab, so a README that breaks fails CI.

The blocks run in order in lab.host's netns (where ``scripts/run`` starts the daemon, so its
listeners never touch the machine's namespace), from a directory that looks like the checkout
(``.venv`` and ``scripts`` link to it) but keeps ``state/`` to itself. A lab instance is the
process: ``<PID>``/``<IP>`` are its init PID and address, ``<NEW_PID>`` the PID after it is
replaced. ``scripts/test`` is the one block not run here: it is this suite (CI runs exactly it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from lab.daemon import REPO, start_in_lab_host
from lab.traffic import eventually_roundtrip

pytestmark = pytest.mark.lab

HOST = "198.18.0.1"


def command_blocks(markdown: str) -> list[str]:
    """Indented (4 spaces, after a blank line) and fenced code blocks, in order."""
    blocks: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append("\n".join(lines[i + 1:end]))
            i = end + 1
        elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            start = i
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                i += 1
            blocks.append("\n".join(line[4:] for line in lines[start:i]).strip())
        else:
            i += 1
    return blocks


def test_command_blocks_are_found() -> None:
    blocks = command_blocks("text\n\n    a\n    b\n\nmore\n```sh\nc\n```\n    not a block\n")
    assert blocks == ["a\nb", "c"]


def test_readme_commands_run(lab: Any, tmp_path: Path) -> None:
    blocks = command_blocks((REPO / "README.md").read_text())
    assert blocks[0] == "scripts/run" and "scripts/test" in blocks
    work = tmp_path / "checkout"
    work.mkdir()
    for name in (".venv", "scripts"):
        (work / name).symlink_to(REPO / name)

    inst = lab.add_instance()
    lab.echo(inst, "tcp", "127.0.0.1", 80)
    daemon = None
    try:
        for block in blocks:
            if block == "scripts/test":
                continue
            if block == "scripts/run":
                daemon = start_in_lab_host(lab, ["bash", "-c", f"cd {work} && exec {block}"],
                                           tmp_path / "daemon.log", timeout=60)
                continue
            if "<NEW_PID>" in block:
                inst.restart()  # `lxc restart -f`: a new init with the same address
                lab.echo(inst, "tcp", "127.0.0.1", 80)
            script = (block.replace("<NEW_PID>", str(inst.pid)).replace("<PID>", str(inst.pid))
                      .replace("<IP>", inst.ipv4))
            assert not re.search(r"<[A-Z_]+>", script), f"unknown placeholder in {block!r}"
            done = lab.host.run(["bash", "-euo", "pipefail", "-c", script], cwd=work,
                                check=False, timeout=60)
            assert done.returncode == 0, (block, done.stdout.decode(), done.stderr.decode())
            out = done.stdout.decode()
            if "config device add" in block or "<NEW_PID>" in block:
                # The device the README adds forwards (again, after the restart).
                assert eventually_roundtrip(lab.host, HOST, 8080, b"readme") == b"readme"
            if "pylxd" in block:
                assert "'web': {" in out and "'listen': 'tcp:0.0.0.0:8080'" in out
            if "lxc config device show" in block:
                assert "listen: tcp:0.0.0.0:8080" in out
            if "/1.0/metrics" in block:
                assert 'device="web"' in out and out.rstrip().endswith(" 1.0")
        assert daemon is not None
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            assert daemon.wait(20) == 0
            assert daemon.stdout is not None
            daemon.stdout.close()
    assert (work / "state" / "lxdproxy.db").exists()  # scripts/run kept its state in ``work``
