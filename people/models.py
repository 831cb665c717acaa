"""Who a console user is at an identity provider.

An account signed in through OpenID Connect is matched by (issuer, subject): the issuer's URL
and the value of the configured claim (``sub`` by default, which the provider promises never to
reassign). An e-mail address alone is never the key unless the deployment chooses it
(``OIDC_MATCH_CLAIM=email``), because whoever controls an address at some provider would
otherwise inherit the account."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ExternalIdentity(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="external_identities"
    )
    issuer = models.CharField(max_length=500)
    # The name of the claim whose value ``subject`` holds (``sub`` unless configured).
    claim = models.CharField(max_length=64, default="sub")
    subject = models.CharField(max_length=500)
    created_at = models.DateTimeField()
    last_sign_in = models.DateTimeField()

    class Meta:
        verbose_name_plural = "external identities"
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "claim", "subject"], name="uniq_external_identity"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} = {self.claim} {self.subject} at {self.issuer}"
