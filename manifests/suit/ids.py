"""Vendor and class identifiers, as SUIT specifies them (RFC 4122 UUIDv5)."""

from __future__ import annotations

import uuid


def vendor_id(domain: str) -> uuid.UUID:
    """UUIDv5 of the vendor's DNS domain in the DNS namespace (``arm.com`` -> ``fa6b4a53-…``)."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, domain)


def class_id(vendor: uuid.UUID, name: str) -> uuid.UUID:
    """UUIDv5 of the device-class name in the vendor's namespace."""
    return uuid.uuid5(vendor, name)
