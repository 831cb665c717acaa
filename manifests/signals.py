"""Hooks other apps connect to (campaigns pause or stop their rollouts on these).

Sent inside the transaction that made the change; receivers must do their work in the same
transaction or defer it with ``transaction.on_commit``."""

from django.dispatch import Signal

# release, verdict, reason: an approved release no longer satisfies its policy.
release_approval_lost = Signal()
# release, reason: a release was revoked; its campaigns stop and in-flight work is cancelled.
release_revoked = Signal()
# vendor: a vendor was created; devices whose reported manufacturer names it can be mapped now.
vendor_created = Signal()
# device_class: a device class was created; devices of its vendor whose reported model names it
# can be mapped now (without waiting for them to register again).
device_class_created = Signal()
