"""Signing-key lifecycle: register, rotate (with an overlap), revoke (with an effective time).

Expiry needs no action: a key past ``valid_until`` stops counting wherever keys are evaluated,
and the periodic release re-evaluation notices releases that lost approval through it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from manifests import suit
from manifests.errors import InvalidKeyError, KeyExistsError, KeyStateError
from manifests.models import KeyStatus, SigningAlgorithm, SigningKey
from manifests.services.access import KEY_OFFICERS, require_role
from manifests.services.releases import releases_reevaluate
from manifests.services.trust import trust_policies_after_revocation

# A rotation keeps the old key valid this long unless told otherwise, so approvals in flight
# made with it still count while signers switch.
DEFAULT_ROTATION_OVERLAP = dt.timedelta(days=7)


def signing_key_register(
    *,
    owner: AbstractBaseUser,
    public_key_pem: str,
    name: str = "",
    valid_from: dt.datetime | None = None,
    valid_until: dt.datetime | None = None,
    actor: AbstractBaseUser | str | None = None,
) -> SigningKey:
    try:
        key = suit.load_public_key_pem(public_key_pem.encode())
    except suit.SUITError as exc:
        raise InvalidKeyError(f"{exc} [{exc.code}]") from exc
    kid = suit.kid_for_public_key(key).hex()
    start = valid_from or timezone.now()
    if valid_until is not None and valid_until <= start:
        raise KeyStateError("valid_until must be after valid_from")
    with transaction.atomic():
        if SigningKey.objects.filter(kid=kid).exists():
            raise KeyExistsError(f"key {kid[:16]}… is already registered")
        record = SigningKey.objects.create(
            owner=owner,
            name=name,
            algorithm=SigningAlgorithm(suit.key_algorithm(key)),
            public_key_pem=suit.public_key_pem(key).decode(),
            kid=kid,
            valid_from=start,
            valid_until=valid_until,
        )
        audit_record(
            actor=actor or owner,
            action="key.register",
            object_type="signing_key",
            object_id=kid,
            details={
                "owner": owner.get_username(),
                "algorithm": record.algorithm,
                "valid_from": start.isoformat(),
                "valid_until": valid_until.isoformat() if valid_until else None,
            },
        )
        return record


def _require_key_authority(actor: Any, key: SigningKey, *, at: dt.datetime) -> None:
    """Only the key's owner, or security / admin, may rotate or revoke it."""
    if isinstance(actor, AbstractBaseUser) and actor.pk == key.owner_id and actor.is_active:
        return
    require_role(actor, *KEY_OFFICERS, at=at)


def key_rotate(
    *,
    key: SigningKey,
    new_public_key_pem: str,
    overlap: dt.timedelta = DEFAULT_ROTATION_OVERLAP,
    actor: AbstractBaseUser | str | None = None,
    now: dt.datetime | None = None,
) -> SigningKey:
    """Register the successor and let the old key expire after ``overlap``."""
    now = now or timezone.now()
    if overlap < dt.timedelta(0):
        raise KeyStateError("rotation overlap cannot be negative")
    with transaction.atomic():
        old = SigningKey.objects.select_for_update().get(pk=key.pk)
        _require_key_authority(actor, old, at=now)
        if old.status != KeyStatus.ACTIVE:
            raise KeyStateError(f"key {old.kid[:16]}… is {old.status}; only active keys rotate")
        new = signing_key_register(
            owner=old.owner,
            public_key_pem=new_public_key_pem,
            name=old.name,
            valid_from=now,
            actor=actor,
        )
        end = now + overlap
        SigningKey.objects.filter(pk=old.pk).update(
            status=KeyStatus.ROTATED,
            replaced_by=new,
            valid_until=min(old.valid_until, end) if old.valid_until else end,
        )
        audit_record(
            actor=actor or old.owner,
            action="key.rotate",
            object_type="signing_key",
            object_id=old.kid,
            details={"successor": new.kid, "old_valid_until": end.isoformat()},
        )
        releases_reevaluate(kids=[old.kid], now=now, actor=actor)
    return new


def key_revoke(
    *,
    key: SigningKey,
    reason: str,
    effective_at: dt.datetime | None = None,
    actor: AbstractBaseUser | str | None = None,
    now: dt.datetime | None = None,
) -> SigningKey:
    """Revoke from ``effective_at`` (may be in the past, e.g. the suspected compromise time).

    Signatures by the key stop counting from then on, and releases that depended on it are
    re-evaluated at once; those that lose approval pause their campaigns."""
    now = now or timezone.now()
    if not reason.strip():
        raise KeyStateError("a revocation needs a reason")
    effective = effective_at or now
    with transaction.atomic():
        locked = SigningKey.objects.select_for_update().get(pk=key.pk)
        _require_key_authority(actor, locked, at=now)
        if locked.status == KeyStatus.REVOKED:
            raise KeyStateError(f"key {locked.kid[:16]}… is already revoked")
        SigningKey.objects.filter(pk=locked.pk).update(
            status=KeyStatus.REVOKED, revoked_at=effective, revocation_reason=reason
        )
        audit_record(
            actor=actor,
            action="key.revoke",
            object_type="signing_key",
            object_id=locked.kid,
            details={"reason": reason, "effective_at": effective.isoformat()},
        )
        releases_reevaluate(kids=[locked.kid], now=now, actor=actor)
        # Devices trust keys through their class's trust policy: the next one leaves it out.
        trust_policies_after_revocation(kid=locked.kid, actor=actor, now=now)
    locked.refresh_from_db()
    return locked
