"""CoRE link format (RFC 6690) as LwM2M registration payloads use it.

A registration payload lists the client's objects and instances (``</1/0>,</3/0>,</5>;ver=1.1``),
optionally with an alternate root path (``</lwm2m>;rt="oma.lwm2m"``). The parser is strict and
bounded: anything outside that grammar raises :class:`LinkFormatError`, never another exception,
because the payload comes from an unauthenticated peer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from workers.lwm2m.errors import LinkFormatError

MAX_LINKS = 1024
MAX_ID = 65535
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_PTOKEN = re.compile(r"^[!#$%&'()*+\-./:<=>?@\[\]^_`{|}~0-9A-Za-z]*$")


@dataclass(frozen=True)
class Link:
    """One link: its target path segments and attributes (None for a valueless attribute)."""

    target: str
    attrs: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectLink:
    """An LwM2M object (instance None) or object instance advertised by the client."""

    object_id: int
    instance_id: int | None
    version: str | None = None


@dataclass(frozen=True)
class RegisteredObjects:
    """The client's data model as declared at registration."""

    root_path: str
    objects: tuple[ObjectLink, ...]
    content_format: int | None = None

    def has_object(self, object_id: int) -> bool:
        return any(o.object_id == object_id for o in self.objects)

    def instances(self, object_id: int) -> list[int]:
        found = {
            o.instance_id
            for o in self.objects
            if o.object_id == object_id and o.instance_id is not None
        }
        return sorted(found)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
            continue
        if quoted and ch == "\\":
            current.append(ch)
            escaped = True
            continue
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted:
        raise LinkFormatError("unterminated quoted string")
    parts.append("".join(current))
    return parts


def parse_links(text: str) -> list[Link]:
    """Parse RFC 6690 link format into links; strict about the characters it accepts."""
    if not isinstance(text, str):
        raise LinkFormatError("link format must be text")
    stripped = text.strip()
    if not stripped:
        return []
    raw_links = _split_outside_quotes(stripped, ",")
    if len(raw_links) > MAX_LINKS:
        raise LinkFormatError(f"more than {MAX_LINKS} links")
    links: list[Link] = []
    for raw in raw_links:
        item = raw.strip()
        if not item.startswith("<"):
            raise LinkFormatError(f"link {item[:40]!r} does not start with '<'")
        end = item.find(">")
        if end < 0:
            raise LinkFormatError(f"link {item[:40]!r} has no closing '>'")
        target = item[1:end]
        if any(c in target for c in '<>" ') or any(ord(c) < 0x21 or ord(c) > 0x7E for c in target):
            raise LinkFormatError(f"link target {target[:40]!r} has invalid characters")
        rest = item[end + 1 :]
        attrs: dict[str, str | None] = {}
        if rest:
            if not rest.startswith(";"):
                raise LinkFormatError(f"junk after link target: {rest[:40]!r}")
            for param in _split_outside_quotes(rest[1:], ";"):
                name, eq, value = param.partition("=")
                name = name.strip()
                if not _TOKEN.match(name):
                    raise LinkFormatError(f"invalid attribute name {name[:40]!r}")
                if not eq:
                    attrs[name] = None
                    continue
                value = value.strip()
                if value.startswith('"'):
                    if len(value) < 2 or not value.endswith('"'):
                        raise LinkFormatError(f"badly quoted value for {name}")
                    value = value[1:-1].replace('\\"', '"')
                elif not _PTOKEN.match(value):
                    raise LinkFormatError(f"invalid value for attribute {name}: {value[:40]!r}")
                attrs[name] = value
        links.append(Link(target=target, attrs=attrs))
    return links


def _parse_id(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise LinkFormatError(f"{what} {text[:10]!r} is not a number")
    value = int(text)
    if value > MAX_ID:
        raise LinkFormatError(f"{what} {value} exceeds {MAX_ID}")
    return value


def parse_registration_payload(payload: bytes) -> RegisteredObjects:
    """Parse a Register/Update payload into the objects and instances the client exposes."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise LinkFormatError("registration payload is not UTF-8") from None
    links = parse_links(text)
    root = "/"
    content_format: int | None = None
    for link in links:
        if link.attrs.get("rt") == "oma.lwm2m":
            root = link.target if link.target.endswith("/") else link.target + "/"
            ct = link.attrs.get("ct")
            if ct is not None:
                content_format = _parse_id(ct.split(" ")[0], "ct")
    if not root.startswith("/"):
        raise LinkFormatError(f"alternate path {root!r} is not absolute")
    objects: list[ObjectLink] = []
    for link in links:
        if link.attrs.get("rt") == "oma.lwm2m":
            continue
        target = link.target
        if not target.startswith(root):
            raise LinkFormatError(f"link {target[:40]!r} is outside the root path {root!r}")
        segments = target[len(root) :].strip("/").split("/")
        if not segments or segments == [""] or len(segments) > 2:
            raise LinkFormatError(f"link {target[:40]!r} is not /object or /object/instance")
        object_id = _parse_id(segments[0], "object id")
        instance_id = _parse_id(segments[1], "instance id") if len(segments) == 2 else None
        version = link.attrs.get("ver")
        if version is not None and not re.match(r"^\d{1,3}\.\d{1,3}$", version):
            raise LinkFormatError(f"object version {version[:10]!r} is not major.minor")
        objects.append(ObjectLink(object_id, instance_id, version))
    return RegisteredObjects(root_path=root, objects=tuple(objects), content_format=content_format)


def format_registration_payload(objects: list[ObjectLink], *, root_path: str = "/") -> bytes:
    """Encode the client's objects as a registration payload (used by the simulator)."""
    parts: list[str] = []
    if root_path != "/":
        parts.append(f'<{root_path.rstrip("/")}>;rt="oma.lwm2m"')
    prefix = root_path.rstrip("/")
    for o in objects:
        target = f"{prefix}/{o.object_id}" + (
            f"/{o.instance_id}" if o.instance_id is not None else ""
        )
        parts.append(f"<{target}>" + (f";ver={o.version}" if o.version else ""))
    return ",".join(parts).encode()
