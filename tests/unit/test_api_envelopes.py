"""Pure API pieces against LXD 5.0.2 captures: envelopes, Go JSON errors, ETag, PUT/PATCH
semantics, device validation wording, the device diff, and operation retention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lxdproxy.api.envelopes import async_body, check_if_match, error_body, etag_of, sync_body
from lxdproxy.api.instance_bodies import patch_body, put_body
from lxdproxy.api.operations import OperationRegistry, instance_resources
from lxdproxy.api.request_json import decode_object
from lxdproxy.config import validate_proxy_device
from lxdproxy.errors import ConfigError, LxdError, NotFoundError
from lxdproxy.manager.writes import diff_devices, validate_devices
from lxdproxy.manager.writes import from_patch as merge_patch

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "rest"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def from_put(body: dict):
    return put_body(json.dumps(body).encode())[0]


def from_patch(record: dict, body: dict):
    return merge_patch(record, patch_body(json.dumps(body).encode()))


def test_sync_envelope_matches_capture_key_for_key() -> None:
    captured = fixture("patch-add-proxy-c1.json")["body"]
    assert list(sync_body({})) == list(captured)
    assert sync_body({}) == captured


def test_error_envelopes_match_captures() -> None:
    assert error_body("not found", 404) == fixture("get-bad-endpoint.json")["body"]
    assert error_body("Instance not found", 404) == fixture("get-instance-missing.json")["body"]


def test_async_envelope_and_operation_shape_match_capture() -> None:
    captured = fixture("put-instance-c1-wait.json")["body"]["metadata"]
    op = OperationRegistry().finished("Updating instance", instance_resources("c1"))
    got = op.to_json()
    assert list(got) == list(captured)
    for key in ("class", "description", "status", "status_code", "resources", "metadata",
                "may_cancel", "err", "location"):
        assert got[key] == captured[key], key
    body = async_body(op.url, got)
    assert list(body) == list(fixture("put-instance-c1.json")["body"])
    assert body["operation"] == f"/1.0/operations/{op.id}"


def test_failed_operation_shape_matches_capture() -> None:
    captured = fixture("put-start-failure-c1-wait.json")["body"]["metadata"]
    op = OperationRegistry().finished("Updating instance", instance_resources("c1"),
                                      err=captured["err"]).to_json()
    assert (op["status"], op["status_code"], op["err"]) == ("Failure", 400, captured["err"])


@pytest.mark.parametrize(("raw", "message"), [
    (b"{not json", "invalid character 'n' looking for beginning of object key string"),
    (b"", "EOF"),
    (b"{", "unexpected end of JSON input"),
    (b'{"a" 1}', "invalid character '1' after object key"),
    (b'{"a": 1 "b": 2}', "invalid character '\"' after object key:value pair"),
    (b'{"a": [1 2]}', "invalid character '2' after array element"),
    (b'{"a": x}', "invalid character 'x' looking for beginning of value"),
    (b'{} x', "invalid character 'x' after top-level value"),
    (b'[1]', "json: cannot unmarshal array into Go value of type api.InstancePut"),
])
def test_invalid_json_gets_go_wording(raw: bytes, message: str) -> None:
    with pytest.raises(LxdError) as err:
        decode_object(raw)
    assert (err.value.message, err.value.status) == (message, 400)


def test_capture_of_invalid_json_is_reproduced() -> None:
    cap = fixture("patch-invalid-json.json")
    with pytest.raises(LxdError) as err:
        decode_object(cap["request"]["body"].encode())
    assert error_body(err.value.message, err.value.status) == cap["body"]


def test_etag_changes_with_writable_state_only() -> None:
    rec = fixture("get-instance-c1.json")["body"]["metadata"]
    tag = etag_of(rec)
    assert etag_of({**rec, "status": "Stopped", "expanded_devices": {}}) == tag
    assert etag_of({**rec, "devices": {}}) != tag
    check_if_match(None, tag)
    check_if_match(f'"{tag}"', tag)  # lxc echoes the quoted value
    with pytest.raises(LxdError) as err:
        check_if_match('"abc"', tag)
    assert err.value.status == 412
    assert err.value.message == (
        f"ETag does not match: {tag} vs abc. The configuration has been modified since this "
        "change began. Please retrieve the updated configuration before proceeding.")


def test_put_replaces_devices_and_ignores_read_only_fields() -> None:
    body = fixture("put-instance-c1.json")["request"]["body"]
    body = {**body, "expanded_devices": {"x": {"type": "disk"}}, "name": "other",
            "status": "Stopped", "created_at": "x"}
    desired = from_put(body)
    assert desired.devices == body["devices"]
    assert desired.config == body["config"]
    assert from_put({}).devices == {}  # absent devices deletes every local device


def test_patch_merges_by_device_name_and_null_deletes() -> None:
    record = fixture("get-instance-c1.json")["body"]["metadata"]
    patch = fixture("patch-add-proxy-c1.json")["request"]["body"]
    desired = from_patch(record, patch)
    assert set(desired.devices) == {"eth0", "hostusr", "patch-ok"}
    # a device in the body replaces the whole device (keys are not merged)
    desired = from_patch(record, {"devices": {"eth0": {"type": "nic", "network": "x"}}})
    assert desired.devices["eth0"] == {"type": "nic", "network": "x"}
    desired = from_patch(record, {"devices": {"hostusr": None}, "config": {"user.a": "b"}})
    assert "hostusr" not in desired.devices and "eth0" in desired.devices
    assert desired.config["user.a"] == "b"
    assert desired.config["image.os"] == "busybox"  # config keys merged


@pytest.mark.parametrize("devices", [
    {"web": {"type": "proxy", "nat": True}},
    {"web": {"type": "proxy", "uid": 1000}},
    {"web": "tcp"},
])
def test_non_string_device_values_are_rejected(devices: dict) -> None:
    with pytest.raises(LxdError) as err:
        from_put({"devices": devices})
    assert err.value.status == 400
    assert err.value.message.startswith("json: cannot unmarshal ")


def test_validation_errors_carry_lxd_prefix_in_sorted_order() -> None:
    devices = {
        "b-bad": {"type": "proxy", "listen": "tcp:127.0.0.1:80", "connect": "tcp:localhost:80"},
        "a-bad": {"type": "proxy", "listen": "tcp:127.0.0.1:80"},
        "eth0": {"type": "nic", "network": "br0"},
    }
    with pytest.raises(ConfigError) as err:
        validate_devices(devices)
    assert err.value.message == ('Invalid devices: Device validation failed for "a-bad": '
                                 'Invalid value for device option "connect": Unknown protocol '
                                 'type ""')
    del devices["a-bad"]
    with pytest.raises(ConfigError) as err:
        validate_devices(devices)
    assert err.value.message == ('Invalid devices: Device validation failed for "b-bad": '
                                 'Invalid value for device option "connect": Not an IP address '
                                 '"localhost"')
    with pytest.raises(ConfigError) as err:
        validate_devices({"d": {"listen": "x"}})
    assert err.value.message == ('Invalid devices: Device validation failed for "d": '
                                 'Failed loading device "d": Missing device type in config')


def test_only_proxies_are_parsed_others_are_kept_as_is() -> None:
    devices = fixture("put-instance-c1.json")["request"]["body"]["devices"]
    parsed = validate_devices(devices)
    assert set(parsed) == {"patch-ok", "patch-put"}


def _proxy(port: int, **extra: str):
    return validate_proxy_device({"type": "proxy", "listen": f"tcp:127.0.0.1:{port}",
                                  "connect": "tcp:127.0.0.1:80", **extra})


def test_diff_stops_removed_and_starts_added_and_changed() -> None:
    old = {"keep": _proxy(1), "gone": _proxy(2), "moved": _proxy(3)}
    new = {"keep": _proxy(1), "moved": _proxy(4), "added": _proxy(5)}
    diff = diff_devices(old, new)
    assert diff.stop == ("gone",)
    assert diff.start == ("added", "moved")  # a changed device is restarted in place
    assert diff_devices(old, new, namespaces_changed=True).start == ("added", "keep", "moved")


def test_plan_restarts_nat_devices_when_nics_change() -> None:
    nat = validate_proxy_device({"type": "proxy", "listen": "tcp:198.18.0.1:80",
                                 "connect": "tcp:198.18.0.11:80", "nat": "true"})
    old = {"n": nat, "p": _proxy(1)}
    diff = diff_devices(old, dict(old), nics_changed=True)
    assert diff.stop == () and diff.start == ("n",)
    assert diff_devices(old, dict(old)).start == ()


def test_operations_are_kept_for_the_retention_period_then_404() -> None:
    now = [1000.0]
    ops = OperationRegistry(retention_s=60, clock=lambda: now[0])
    op = ops.finished("Updating instance", instance_resources("c1"))
    failed = ops.finished("Updating instance", instance_resources("c1"), err="boom")
    assert ops.listing() == {"success": [op.url], "failure": [failed.url]}
    now[0] += 59
    assert ops.get(op.id) is op
    now[0] += 2
    with pytest.raises(NotFoundError) as err:
        ops.get(op.id)
    assert err.value.message == "Operation not found"


def test_instance_filter_subset() -> None:
    from lxdproxy.api.instance_filter import matches, parse_filter

    rec = {"name": "c1", "status": "Running", "type": "container",
           "config": {"user.x": "1"}, "expanded_config": {"user.x": "1"}}
    assert matches(parse_filter(""), rec)
    assert matches(parse_filter("status eq running and name eq c1"), rec)
    assert not matches(parse_filter("status eq stopped"), rec)
    assert matches(parse_filter("status ne stopped"), rec)
    assert matches(parse_filter("expanded_config.user.x eq 1"), rec)
    assert not matches(parse_filter("config.user.y eq 1"), rec)
    assert matches(parse_filter('name eq "c1"'), rec)
    for bad in ("name eq c1 or name eq c2", "name gt c1", "(name eq c1)"):
        with pytest.raises(LxdError) as err:
            parse_filter(bad)
        assert err.value.status == 400 and "Unsupported filter" in err.value.message
