"""Log lines cannot be forged by a name; the state directory is private (issue 12)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from lxdproxy.log_format import EscapingFormatter, escape_control
from lxdproxy.state_dir import PRIVATE_FILES, prepare_state_dir


@pytest.mark.parametrize(("text", "shown"), [
    ("plain name", "plain name"),
    ("a\nb", "a\\nb"),
    ("a\r\nlxdproxy: ERROR forged", "a\\r\\nlxdproxy: ERROR forged"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("x\u2028y\x85z", "x\\u2028y\\x85z"),
    ("tab\there", "tab\\there"),
    ("ünïcode", "ünïcode"),
])
def test_escape_control(text: str, shown: str) -> None:
    assert escape_control(text) == shown


def test_formatter_keeps_one_line_per_record_and_the_traceback() -> None:
    fmt = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "device %s started",
                               ("a\nERROR forged",), None)
    assert fmt.format(record) == "INFO device a\\nERROR forged started"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed\n%s", ("x",),
                                   sys.exc_info())
    lines = fmt.format(record).splitlines()
    assert lines[0] == "ERROR failed\\nx"
    assert lines[1].startswith("Traceback")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_new_state_dir_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert prepare_state_dir(state, tmp_path / "elsewhere.socket") == []
    assert _mode(state) == 0o700
    assert _mode(state / "lxdproxy.db") == 0o600


def test_state_dir_holding_the_api_socket_is_traversable_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare_state_dir(state, state / "unix.socket")
    assert _mode(state) == 0o711


def test_open_modes_are_fixed_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    for name in PRIVATE_FILES:
        (state / name).write_bytes(b"x")
        os.chmod(state / name, 0o644)
    with caplog.at_level(logging.WARNING, "lxdproxy.state_dir"):
        warnings = prepare_state_dir(state, state / "unix.socket")
    assert _mode(state) == 0o711
    assert {name: _mode(state / name) for name in PRIVATE_FILES} == dict.fromkeys(PRIVATE_FILES,
                                                                                  0o600)
    assert len(warnings) == 1 + len(PRIVATE_FILES)
    assert f"{state / 'lxdproxy.db'} had mode 0644, open to more than root: changed to 0600" \
        in caplog.text
    # Stricter modes are the operator's choice and stay.
    os.chmod(state / "server.key", 0o400)
    assert prepare_state_dir(state, state / "unix.socket") == []
    assert _mode(state / "server.key") == 0o400


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.chmod(target, 0o644)
    (state / "server.key").symlink_to(target)
    warnings = prepare_state_dir(state, tmp_path / "api.socket")
    assert _mode(target) == 0o644
    assert warnings == [f"{state / 'server.key'} is not a regular file: its permissions were "
                        "left alone"]
