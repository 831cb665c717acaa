"""Run the test identity provider, or change it.

    python -m tests.console.oidc_provider.serve serve PORT CLIENT_ID SECRET REDIRECT_URI
    python -m tests.console.oidc_provider.serve user NAME PASSWORD [GROUP ...]

Both read the instance's database, key and issuer from the environment (``settings.py``);
``user`` creates the user or sets its password and replaces its groups.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.console.oidc_provider.settings"
    # The provider runs on loopback HTTP; oauthlib refuses non-TLS URLs without this.
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from oauth2_provider.models import Application

    command, *args = argv
    if command == "serve":
        port, client_id, secret, redirect_uri = args
        call_command("migrate", verbosity=0)
        Application.objects.update_or_create(
            client_id=client_id,
            defaults={
                "name": "fwupd console",
                "client_secret": secret,
                "client_type": Application.CLIENT_CONFIDENTIAL,
                "authorization_grant_type": Application.GRANT_AUTHORIZATION_CODE,
                "redirect_uris": redirect_uri,
                "algorithm": Application.RS256_ALGORITHM,
                "skip_authorization": True,
            },
        )
        call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, use_threading=True)
    elif command == "user":
        name, password, *groups = args
        user, _ = User.objects.get_or_create(username=name, defaults={"email": f"{name}@idp.test"})
        user.set_password(password)
        user.save()
        user.groups.set([Group.objects.get_or_create(name=group)[0] for group in groups])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
