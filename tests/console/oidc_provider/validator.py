"""The test provider's claims: username, verified e-mail and the user's Django groups as
``groups`` (in the ``profile`` scope). A file named ``aud`` (or ``nonce``) in
``OIDC_TEST_TAMPER_DIR`` makes the provider put its content in that claim of its ID tokens,
signed with its real key: what a token minted for another client, or for another sign-in,
looks like to the console."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator


class GroupsValidator(OAuth2Validator):  # type: ignore[misc]
    oidc_claim_scope = {
        **OAuth2Validator.oidc_claim_scope,
        "groups": "profile",
        "email_verified": "email",
    }

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        user = request.user
        return {
            "preferred_username": user.username,
            "email": user.email,
            "email_verified": True,
            "groups": sorted(user.groups.values_list("name", flat=True)),
        }

    def get_id_token_dictionary(self, token: Any, token_handler: Any, request: Any) -> Any:
        claims, expiration_time = super().get_id_token_dictionary(token, token_handler, request)
        tamper = Path(os.environ["OIDC_TEST_TAMPER_DIR"])
        for claim in ("aud", "nonce"):
            if (tamper / claim).exists():
                claims[claim] = (tamper / claim).read_text().strip()
        return claims, expiration_time
