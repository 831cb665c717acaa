"""The one set of people the whole suite uses, by username: who holds which role and signs with
which key algorithm. Each test world takes the people it needs from this table (campaign and
console worlds through ``tests.helpers.deployment``, the release tests through the root
conftest's fixtures, the API tests one person per role), so a name means the same person in
every test and every log line.
"""

from __future__ import annotations

from typing import Any

# The superuser every world bootstraps roles with (superusers hold admin).
ADMIN = "admin"

# username -> (role or None, key algorithm or None)
PERSONAS: dict[str, tuple[str | None, str | None]] = {
    "author": ("author", "ES256"),
    "qa": ("qa", "Ed25519"),
    "sec": ("security", "ES256"),
    "sec2": ("security", "ES256"),  # a second security approver (two-of-security policies)
    "ops": ("fleet_operator", "ES256"),
    "auditor": ("auditor", None),
    "outsider": (None, "ES256"),  # holds no role
}

# The person who holds exactly that role (None: no role); "admin" is the superuser.
USERNAME_BY_ROLE: dict[str | None, str] = {
    "author": "author",
    "qa": "qa",
    "security": "sec",
    "fleet_operator": "ops",
    "auditor": "auditor",
    "admin": ADMIN,
    None: "outsider",
}


def people(*usernames: str) -> list[tuple[str, str | None, str | None]]:
    """(username, role, key algorithm) of the named personas, in the order given."""
    return [(name, *PERSONAS[name]) for name in usernames]


def superuser(django_user_model: Any, *, password: str | None = None) -> Any:
    """The ``admin`` superuser (the same row for every world of one test)."""
    existing = django_user_model.objects.filter(username=ADMIN).first()
    if existing is not None:
        return existing
    return django_user_model.objects.create_superuser(username=ADMIN, password=password)
