"""From an identity provider's claims to the roles a console user holds (pure: no Django).

Invariants: the provider governs only the roles that appear in the role map (a role granted by
an admin that no group maps to is never touched); a claim that is missing or of an unexpected
type maps to no role, never to an error that would hide the refusal reason; the same claims
always give the same roles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SignInPolicy:
    """How a deployment matches provider identities to accounts and maps groups to roles."""

    match_claim: str = "sub"
    username_claim: str = "preferred_username"
    role_claim: str | None = None
    # provider group -> roles it grants
    role_map: Mapping[str, frozenset[str]] = field(default_factory=dict)
    require_role: bool = False

    @property
    def managed_roles(self) -> frozenset[str]:
        """The roles the provider decides (granted and revoked at each sign-in)."""
        if not self.role_claim:
            return frozenset()
        return frozenset(role for roles in self.role_map.values() for role in roles)


def role_map_from_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, frozenset[str]]:
    """``[("fw-qa", "qa"), ("fw-rel", "author"), ("fw-rel", "qa")]`` -> group -> roles."""
    merged: dict[str, set[str]] = {}
    for group, role in pairs:
        merged.setdefault(group, set()).add(role)
    return {group: frozenset(roles) for group, roles in merged.items()}


def claim_groups(claims: Mapping[str, Any], claim: str | None) -> frozenset[str]:
    """The provider's groups: a list of strings, or one string (space- or comma-separated)."""
    if not claim:
        return frozenset()
    value = claims.get(claim)
    if isinstance(value, str):
        return frozenset(part for part in value.replace(",", " ").split() if part)
    if isinstance(value, list | tuple):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def mapped_roles(claims: Mapping[str, Any], policy: SignInPolicy) -> frozenset[str]:
    """The roles the claims grant under ``policy``."""
    groups = claim_groups(claims, policy.role_claim)
    return frozenset(role for group in groups for role in policy.role_map.get(group, ()))
