"""``manage.py trustpolicy_deliver``: send a class's released device trust policy to every
registered device of the class (a trust-policy ``fw_update`` each; docs/suit.md)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns.management.commands.campaign import refusals
from campaigns.trust_delivery import trust_policy_deliver
from manifests.management.cli import device_class_named, user_named
from manifests.models import DeviceTrustPolicy


class Command(BaseCommand):
    help = "Send a released device trust policy to every registered device of its class."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--vendor-domain", required=True)
        parser.add_argument("--class", dest="class_name", required=True)
        parser.add_argument("--policy-version", type=int, required=True)
        parser.add_argument("--user", required=True, help="fleet operator or admin")

    def handle(self, *args: Any, **options: Any) -> None:
        device_class = device_class_named(options["vendor_domain"], options["class_name"])
        policy = DeviceTrustPolicy.objects.filter(
            device_class=device_class, version=options["policy_version"]
        ).first()
        if policy is None:
            raise CommandError(
                f"{device_class} has no trust policy v{options['version']}", returncode=1
            )
        with refusals():
            result = trust_policy_deliver(policy=policy, actor=user_named(options["user"]))
        self.stdout.write(
            f"trust policy v{policy.version} sent to {result.sent} device(s) "
            f"({result.already} already had it)"
        )
