"""A simulated device's answer to a Read: the values under the path in the requested format
(plain text or opaque for one resource, TLV otherwise), shared by both simulators."""

from __future__ import annotations

from collections.abc import Mapping

import aiocoap
from aiocoap.numbers.codes import Code

from workers.lwm2m import content
from workers.lwm2m.errors import LwM2MError


def read_answer(
    values: Mapping[content.Path, content.Value], path: content.Path, accept: int | None
) -> aiocoap.Message:
    selected = {p: v for p, v in values.items() if p[: len(path)] == path}
    if not selected:
        return aiocoap.Message(code=Code.NOT_FOUND)
    single = len(path) >= 3 and list(selected) == [path]
    text = content.CT_OPAQUE if single and isinstance(selected[path], bytes) else content.CT_TEXT
    fmt = (text if single else content.CT_TLV) if accept is None else accept
    if fmt in (content.CT_TEXT, content.CT_OPAQUE) and not single:
        return aiocoap.Message(code=Code.NOT_ACCEPTABLE)
    try:
        payload = content.encode(fmt, selected, path)
    except LwM2MError:
        return aiocoap.Message(code=Code.NOT_ACCEPTABLE)
    return aiocoap.Message(code=Code.CONTENT, payload=payload, content_format=fmt)
