"""Device trust policies, server side: draft one for a device class, collect its signatures,
release it when a device would accept it, and draft the next one when a listed key is revoked.

The acceptance rule is the device's own (``manifests.device_trust``): a draft is released only
when ``accept_rotation`` of the class's current released policy (``accept_initial`` for the first
one) accepts the signed document, so the server never publishes a policy its devices would refuse,
and never one the devices' rule does not let through. Released documents are stored as the exact
bytes devices download (``/fw/t/<sha256>``) and never change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from audit.services import audit_record
from manifests import device_trust, suit
from manifests.errors import (
    BadTrustPolicySignatureError,
    InvalidTrustPolicyError,
    TrustPolicyNotAcceptedError,
    TrustPolicyStateError,
)
from manifests.models import (
    DeviceClass,
    DeviceTrustPolicy,
    SigningKey,
    TrustPolicySignature,
    TrustPolicyStatus,
)
from manifests.selectors import current_trust_policy
from manifests.services.access import TRUST_POLICY_WRITERS, require_role
from manifests.services.facts import key_is_usable

# A policy drafted after a key revocation lives this long unless re-drafted.
REVOCATION_POLICY_LIFETIME = dt.timedelta(days=365)


def _public(key: SigningKey) -> suit.PublicKey:
    return suit.load_public_key_pem(key.public_key_pem.encode())


def _draft(
    *,
    device_class: DeviceClass,
    roles: Mapping[str, tuple[int, Sequence[str]]],
    expires_at: dt.datetime,
    actor: Any,
    reason: str,
    now: dt.datetime,
) -> DeviceTrustPolicy:
    """The next version's draft; the caller holds the class row lock."""
    if expires_at <= now:
        raise InvalidTrustPolicyError("a trust policy must expire in the future")
    wanted = {kid for _, kids in roles.values() for kid in kids}
    keys = {k.kid: k for k in SigningKey.objects.filter(kid__in=wanted)}
    missing = sorted(wanted - set(keys))
    if missing:
        raise InvalidTrustPolicyError(f"unknown key(s): {', '.join(k[:16] for k in missing)}")
    unusable = sorted(kid for kid, k in keys.items() if not key_is_usable(k, at=now))
    if unusable:
        raise InvalidTrustPolicyError(
            f"key(s) revoked, expired or not yet valid: {', '.join(k[:16] for k in unusable)}"
        )
    last = DeviceTrustPolicy.objects.filter(device_class=device_class).aggregate(v=Max("version"))
    version = (last["v"] or 0) + 1
    try:
        body = device_trust.policy_body(
            class_id=device_class.uuid,
            version=version,
            expires=expires_at,
            roles={
                role: (threshold, [_public(keys[kid]) for kid in kids])
                for role, (threshold, kids) in roles.items()
            },
        )
    except device_trust.TrustPolicyError as exc:
        raise InvalidTrustPolicyError(str(exc)) from None
    policy = DeviceTrustPolicy.objects.create(
        device_class=device_class,
        version=version,
        body=body,
        body_sha256=hashlib.sha256(body).hexdigest(),
        expires_at=expires_at,
        reason=reason,
        created_by=actor if isinstance(actor, AbstractBaseUser) else None,
        created_at=now,
    )
    audit_record(
        actor=actor,
        action="trust_policy.draft",
        object_type="device_class",
        object_id=device_class.pk,
        details={
            "device_class": str(device_class),
            "version": version,
            "body_sha256": policy.body_sha256,
            "roles": {r: {"threshold": t, "kids": list(k)} for r, (t, k) in roles.items()},
            "expires_at": expires_at.isoformat(),
            "reason": reason,
        },
        now=now,
    )
    return policy


def trust_policy_draft(
    *,
    device_class: DeviceClass,
    roles: Mapping[str, tuple[int, Sequence[str]]],
    expires_at: dt.datetime,
    actor: AbstractBaseUser,
    reason: str = "",
    now: dt.datetime | None = None,
) -> DeviceTrustPolicy:
    """A draft policy of the next version for ``device_class``: ``roles`` maps a role to its
    threshold and the kids of registered, usable keys. Security or admin only."""
    now = now or timezone.now()
    with transaction.atomic():
        require_role(actor, *TRUST_POLICY_WRITERS, at=now)
        locked = DeviceClass.objects.select_for_update().get(pk=device_class.pk)
        return _draft(
            device_class=locked,
            roles=roles,
            expires_at=expires_at,
            actor=actor,
            reason=reason,
            now=now,
        )


def trust_policy_sign(
    *,
    policy: DeviceTrustPolicy,
    signer: AbstractBaseUser,
    cose: bytes,
    now: dt.datetime | None = None,
) -> DeviceTrustPolicy:
    """Store one COSE_Sign1 over a draft's body by a usable key of ``signer``; the draft is
    released as soon as the class's devices would accept it."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = (
            DeviceTrustPolicy.objects.select_for_update()
            .select_related("device_class")
            .get(pk=policy.pk)
        )
        if locked.status != TrustPolicyStatus.DRAFT:
            raise TrustPolicyStateError(f"{locked} is {locked.status}; signatures go to drafts")
        try:
            block = suit.parse_signature_block(cose)
        except suit.SUITError as exc:
            raise BadTrustPolicySignatureError(f"not a COSE_Sign1: {exc} [{exc.code}]") from exc
        key = SigningKey.objects.filter(kid=(block.kid or b"").hex()).first()
        if key is None or key.owner_id != signer.pk:
            raise BadTrustPolicySignatureError("the signature's kid is not a key of the signer")
        if not key_is_usable(key, at=now):
            raise BadTrustPolicySignatureError(f"key {key.kid[:16]}… is not usable now")
        if not device_trust.signature_verifies(block, locked.body_bytes, _public(key)):
            raise BadTrustPolicySignatureError(
                "the signature does not verify over this policy's body (forged, or made for "
                "another policy)"
            )
        try:
            with transaction.atomic():
                TrustPolicySignature.objects.create(
                    policy=locked, signer=signer, key=key, cose=bytes(cose), signed_at=now
                )
        except IntegrityError:
            raise BadTrustPolicySignatureError(
                f"key {key.kid[:16]}… already signed {locked}"
            ) from None
        audit_record(
            actor=signer,
            action="trust_policy.sign",
            object_type="device_class",
            object_id=locked.device_class_id,
            details={"version": locked.version, "kid": key.kid},
            now=now,
        )
        _release_if_accepted(locked, actor=signer, now=now)
        return locked


def trust_policy_refusal(policy: DeviceTrustPolicy, *, now: dt.datetime) -> str | None:
    """Why the class's devices would refuse ``policy`` as signed so far (the device's own rule:
    ``accept_initial`` for a first policy, else ``accept_rotation`` of the current one), as
    "reason [code]"; None when they would accept it."""
    blocks = [bytes(s.cose) for s in policy.signatures.order_by("pk")]
    if not blocks:
        return "no signature yet [trust_policy.unsigned]"
    document = device_trust.assemble_policy(policy.body_bytes, blocks)
    current = current_trust_policy(policy.device_class)
    try:
        if current is None or current.document is None:
            device_trust.accept_initial(document, class_id=policy.device_class.uuid, now=now)
        else:
            held = device_trust.decode_policy(bytes(current.document))
            device_trust.accept_rotation(held, document, now=now)
    except device_trust.TrustPolicyError as exc:
        return f"{exc} [{exc.code}]"
    return None


def _release_if_accepted(policy: DeviceTrustPolicy, *, actor: Any, now: dt.datetime) -> str | None:
    """Release ``policy`` if its devices would accept it now; else the refusal (it stays a
    draft). The caller holds the policy's row lock."""
    refusal = trust_policy_refusal(policy, now=now)
    if refusal is not None:
        return refusal
    blocks = [bytes(s.cose) for s in policy.signatures.order_by("pk")]
    document = device_trust.assemble_policy(policy.body_bytes, blocks)
    digest = hashlib.sha256(document).hexdigest()
    DeviceTrustPolicy.objects.filter(pk=policy.pk, status=TrustPolicyStatus.DRAFT).update(
        status=TrustPolicyStatus.RELEASED, document=document, sha256=digest, released_at=now
    )
    policy.status, policy.document, policy.sha256 = TrustPolicyStatus.RELEASED, document, digest
    policy.released_at = now
    audit_record(
        actor=actor,
        action="trust_policy.released",
        object_type="device_class",
        object_id=policy.device_class_id,
        details={"version": policy.version, "sha256": digest, "signatures": len(blocks)},
        now=now,
    )
    return None


def trust_policy_release(
    *, policy: DeviceTrustPolicy, actor: AbstractBaseUser, now: dt.datetime | None = None
) -> DeviceTrustPolicy:
    """Release a draft now, by the same rule as the signature upload (which releases a draft
    as soon as it is accepted): for a draft whose signatures were all in before the current
    policy changed, or to learn why it is still refused. Security or admin only.

    Idempotent: a released policy is returned as it is. A draft the devices would refuse is
    ``TrustPolicyNotAcceptedError`` with the device rule's reason, and nothing changes."""
    now = now or timezone.now()
    with transaction.atomic():
        require_role(actor, *TRUST_POLICY_WRITERS, at=now)
        locked = (
            DeviceTrustPolicy.objects.select_for_update()
            .select_related("device_class")
            .get(pk=policy.pk)
        )
        if locked.status == TrustPolicyStatus.RELEASED:
            return locked
        refusal = _release_if_accepted(locked, actor=actor, now=now)
        if refusal is not None:
            raise TrustPolicyNotAcceptedError(
                f"{locked}: the class's devices would refuse it: {refusal}"
            )
        return locked


def trust_policies_after_revocation(
    *, kid: str, actor: Any, now: dt.datetime
) -> list[DeviceTrustPolicy]:
    """For every class whose current released policy lists ``kid``, a draft of the next version
    without it, nor any other key no longer usable (a role's threshold lowered to the keys left;
    a role left with no key dropped).
    A class whose security role would be left empty gets none: the revocation's audit event
    says so and security must draft one by hand."""
    drafts = []
    for current in DeviceTrustPolicy.objects.filter(
        status=TrustPolicyStatus.RELEASED
    ).select_related("device_class"):
        newest = current_trust_policy(current.device_class)
        if newest is None or newest.pk != current.pk or current.document is None:
            continue
        held = device_trust.decode_policy(bytes(current.document))
        if bytes.fromhex(kid) not in device_trust.listed_kids(held):
            continue
        listed = [k.hex() for k in device_trust.listed_kids(held)]
        usable = {
            k.kid
            for k in SigningKey.objects.filter(kid__in=listed).exclude(kid=kid)
            if key_is_usable(k, at=now)
        }
        roles: dict[str, tuple[int, list[str]]] = {}
        for role, rule in held.roles.items():
            kids = [k.hex() for k in sorted(rule.kids) if k.hex() in usable]
            if kids:
                roles[role] = (min(rule.threshold, len(kids)), kids)
        if device_trust.SECURITY not in roles:
            audit_record(
                actor=actor,
                action="trust_policy.redraft_needed",
                object_type="device_class",
                object_id=current.device_class_id,
                details={"revoked_kid": kid, "version": held.version},
                now=now,
            )
            continue
        locked = DeviceClass.objects.select_for_update().get(pk=current.device_class_id)
        drafts.append(
            _draft(
                device_class=locked,
                roles=roles,
                expires_at=now + REVOCATION_POLICY_LIFETIME,
                actor=actor,
                reason=f"key {kid[:16]}… revoked",
                now=now,
            )
        )
    return drafts
