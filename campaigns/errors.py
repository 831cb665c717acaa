"""Errors of the campaign side. Pure: no Django import, so the spec parser and the engine share it.

Each class carries a stable ``code`` the API and CLI report; messages say what was refused and why.
"""

from __future__ import annotations


class CampaignError(Exception):
    """A campaign operation was refused; nothing was written."""

    code = "campaign.error"


class SpecError(CampaignError):
    """The campaign spec is invalid: names the source, the field path and the reason."""

    code = "campaign.spec_invalid"

    def __init__(
        self,
        reason: str,
        *,
        source: str = "<api>",
        path: str = "",
        errors: list[SpecError] | None = None,
    ) -> None:
        self.source = source
        self.path = path
        self.reason = reason
        # Every problem found, sorted by path; a single-problem error lists itself so callers
        # can always iterate ``errors``.
        self.errors: list[SpecError] = errors if errors else [self]
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.source}: {self.path or '<root>'}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        """The API's shape of one problem."""
        return {"code": self.code, "path": self.path, "reason": self.reason}


class UnknownReleaseError(CampaignError):
    """The spec names a release this server does not know."""

    code = "campaign.unknown_release"


class UnknownTrustPolicyError(CampaignError):
    """The spec names a trust-policy version its device class does not have released."""

    code = "campaign.unknown_trust_policy"


class UnknownTargetError(CampaignError):
    """The spec's target names a vendor or device class this server does not know."""

    code = "campaign.unknown_target"


class CampaignStateError(CampaignError):
    """The operation is not allowed in the campaign's current state."""

    code = "campaign.state"


class TrustPolicyRollbackError(CampaignStateError):
    """A later trust policy of the class is released: rolling an older one out is a rollback."""

    code = "campaign.trust_policy_rollback"


class CampaignStartedError(CampaignStateError):
    """The campaign's start time was changed after its dispatch had begun."""

    code = "campaign.already_started"


class CampaignConflictError(CampaignError):
    """Another campaign already targets the same devices or holds the same name."""

    code = "campaign.conflict"


class GateError(CampaignError):
    """A manual gate blocks the stage: approval missing or given by the wrong role."""

    code = "campaign.gate"


class EmergencyStopError(CampaignError):
    """An emergency stop is in force for this scope; dispatching is halted."""

    code = "campaign.emergency_stop"


def transient_conflict(exc: BaseException) -> bool:
    """A database error that running the same transaction again may not meet: a deadlock or
    serialization failure (PostgreSQL), a busy database (SQLite)."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) in ("40P01", "40001"):
        return True
    return "database is locked" in str(exc)
