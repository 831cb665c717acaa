"""Server compromise: envelopes dispatched straight through the gateway (no release check on the
way) are refused by simulated SUIT devices that hold a trust policy; a policy rotation delivered
as a trust-policy package is accepted only by the device's rotation rule."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest

from manifests import device_trust as trust
from manifests import suit
from tests.workers.lwm2m.conftest import (
    CLASS_ID,
    DictFirmware,
    Harness,
    Release,
    make_release,
    run_with_fleet,
)
from workers.lwm2m.errors import DeviceOperationError
from workers.lwm2m.object5 import FwResult

FAR = dt.datetime.now(tz=dt.UTC) + dt.timedelta(days=365)
ENDPOINT = "sim-00000"


@pytest.fixture(scope="module")
def keys() -> dict[str, list[Any]]:
    return {
        role: [suit.generate_private_key("ES256") for _ in range(3)]
        for role in ("author", "qa", "security", "new_security")
    }


def _policy(keys, *, version: int, security: list[Any], signers: list[Any], **kw: Any) -> bytes:
    roles = {
        "author": (1, keys["author"][:1]),
        "qa": (1, keys["qa"][:2]),
        "security": (2, security),
    }
    for role in kw.pop("drop", ()):
        roles.pop(role)
    body = trust.policy_body(
        class_id=CLASS_ID, version=version, expires=kw.pop("expires", FAR), roles=roles
    )
    return trust.assemble_policy(body, [trust.sign_policy(body, k) for k in signers])


@pytest.fixture(scope="module")
def policy_v1(keys) -> bytes:
    return _policy(keys, version=1, security=keys["security"], signers=keys["security"][:2])


def _signed(keys, *, approvers: list[Any], sequence_number: int = 2) -> Release:
    release = make_release(keys["author"][0], sequence_number=sequence_number)
    blocks = [suit.sign_manifest_digest(release.envelope, key=k) for k in approvers]
    return Release(
        envelope=suit.add_signatures(release.envelope, blocks),
        digest=release.digest,
        payload=release.payload,
    )


def _firmware(*releases: Release, policies: tuple[bytes, ...] = ()) -> DictFirmware:
    fw = DictFirmware()
    for r in releases:
        fw.envelopes[r.digest] = r.envelope
        fw.images[hashlib.sha256(r.payload).hexdigest()] = r.payload
    for p in policies:
        fw.policies[hashlib.sha256(p).hexdigest()] = p
    return fw


def _run(scenario, keys, policy: bytes, firmware: DictFirmware) -> None:
    run_with_fleet(
        scenario,
        count=1,
        anchors=[keys["author"][0].public_key()],
        firmware=firmware,
        spec_kwargs={"trust_policy": policy.hex()},
    )


async def _refused(h: Harness, args: dict[str, Any], code: str) -> None:
    with pytest.raises(DeviceOperationError) as info:
        await h.gateway.run_operation(ENDPOINT, "fw_update", args)
    assert info.value.result["result"] == FwResult.INTEGRITY_CHECK_FAILURE  # type: ignore[attr-defined]
    device = h.fleet.devices[ENDPOINT]
    assert device.events[-1] == f"refused {code}"
    assert (device.state.version, device.state.sequence_number) == ("1.0.0", 1)


def _rotate(policy: bytes) -> dict[str, Any]:
    return {"manifest_digest": hashlib.sha256(policy).hexdigest(), "delivery": "trust-policy"}


@pytest.mark.parametrize(
    "attack",
    ["author_only", "two_signatures_from_one_key", "approver_key_not_listed"],
)
def test_server_compromise_envelope_dispatched_through_the_gateway_is_refused(
    keys, policy_v1, attack: str
) -> None:
    """The gateway is called directly, as by a server whose release checks were bypassed."""
    approvers = {
        "author_only": [],
        "two_signatures_from_one_key": [keys["qa"][0], keys["security"][0], keys["security"][0]],
        "approver_key_not_listed": [keys["qa"][2], *keys["security"][:2]],
    }[attack]
    release = _signed(keys, approvers=approvers)

    async def scenario(h: Harness) -> None:
        await _refused(h, {"manifest_digest": release.digest}, "device.trust_threshold")

    _run(scenario, keys, policy_v1, _firmware(release))


def test_release_signed_by_author_qa_and_security_installs(keys, policy_v1) -> None:
    release = _signed(keys, approvers=[keys["qa"][1], *keys["security"][1:]])

    async def scenario(h: Harness) -> None:
        result = await h.gateway.run_operation(
            ENDPOINT, "fw_update", {"manifest_digest": release.digest}
        )
        assert (result["phase"], result["result"]) == ("succeeded", 1)
        assert h.fleet.devices[ENDPOINT].state.version == "1.1.0"

    _run(scenario, keys, policy_v1, _firmware(release))


def test_threshold_met_by_a_revoked_key_after_the_rotation_reached_the_device_is_refused(
    keys, policy_v1
) -> None:
    # Security key 0 is revoked on the server; v2 lists keys 1, 2 and a new one instead.
    replacement = [*keys["security"][1:], keys["new_security"][0]]
    policy_v2 = _policy(
        keys,
        version=2,
        security=replacement,
        signers=[keys["security"][1], keys["security"][2], keys["new_security"][0]],
    )
    old = _signed(keys, approvers=[keys["qa"][0], *keys["security"][:2]])
    new = _signed(keys, approvers=[keys["qa"][0], *replacement[1:]], sequence_number=3)

    async def scenario(h: Harness) -> None:
        result = await h.gateway.run_operation(ENDPOINT, "fw_update", _rotate(policy_v2))
        assert (result["phase"], result["result"]) == ("succeeded", 1)
        device = h.fleet.devices[ENDPOINT]
        assert device.state.trust_policy == policy_v2.hex()
        assert "trust policy v2" in device.events
        await _refused(h, {"manifest_digest": old.digest}, "device.trust_threshold")
        result = await h.gateway.run_operation(
            ENDPOINT, "fw_update", {"manifest_digest": new.digest}
        )
        assert (result["phase"], device.state.version) == ("succeeded", "1.1.0")

    _run(scenario, keys, policy_v1, _firmware(old, new, policies=(policy_v2,)))


def test_trust_policy_attacks_delivered_through_the_gateway_are_refused(keys, policy_v1) -> None:
    attacks = {
        "device.trust_policy_signature": _policy(  # too few current security keys
            keys,
            version=2,
            security=keys["new_security"],
            signers=[keys["security"][0], *keys["new_security"][:2]],
        ),
        "device.trust_policy_rollback": _policy(
            keys, version=1, security=keys["security"], signers=keys["security"]
        ),
        "device.trust_policy_expired": _policy(
            keys,
            version=3,
            security=keys["security"],
            signers=keys["security"],
            expires=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        ),
        "device.trust_policy_role": _policy(
            keys, version=4, security=[], signers=keys["security"], drop=["security"]
        ),
    }

    async def scenario(h: Harness) -> None:
        for code, policy in attacks.items():
            await _refused(h, _rotate(policy), code)
            assert h.fleet.devices[ENDPOINT].state.trust_policy == policy_v1.hex()

    _run(scenario, keys, policy_v1, _firmware(policies=tuple(attacks.values())))


class _ApprovingFirmware(DictFirmware):
    """A source whose envelope is final only once ``frozen`` is set (approval)."""

    frozen = False

    def envelope_final(self, manifest_digest: str) -> bool:
        return self.frozen


def test_gateway_does_not_cache_an_envelope_until_its_released_envelope_is_frozen(keys) -> None:
    author_only = make_release(keys["author"][0])
    released = _signed(keys, approvers=[keys["qa"][0], *keys["security"][:2]])
    firmware = _ApprovingFirmware(envelopes={author_only.digest: author_only.envelope})

    async def scenario(h: Harness) -> None:
        first = await h.gateway.published_file("m", author_only.digest)
        assert first is not None and first.data == author_only.envelope
        firmware.envelopes[author_only.digest] = released.envelope  # approved: frozen
        firmware.frozen = True
        second = await h.gateway.published_file("m", author_only.digest)
        assert second is not None and second.data == released.envelope
        firmware.envelopes[author_only.digest] = b"changed"
        third = await h.gateway.published_file("m", author_only.digest)
        assert third is not None and third.data == released.envelope  # final: cached

    run_with_fleet(scenario, count=1, anchors=[keys["author"][0].public_key()], firmware=firmware)
