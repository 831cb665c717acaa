"""Pure codecs: link format, TLV, SenML JSON/CBOR, text. Tables of bad input each assert the
specific error; hypothesis round-trips and fuzzes (never an exception outside LwM2MError)."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.lwm2m import content, linkformat, senml, tlv
from workers.lwm2m.content import ObjLink
from workers.lwm2m.errors import (
    ContentFormatError,
    LinkFormatError,
    LwM2MError,
    PathError,
    SenMLError,
    TLVError,
)

# --- link format ---------------------------------------------------------------------------


def test_registration_payload_with_alternate_root_and_versions() -> None:
    objs = linkformat.parse_registration_payload(
        b'</lwm2m>;rt="oma.lwm2m";ct=11543,</lwm2m/1/0>,</lwm2m/3/0>,</lwm2m/5>;ver=1.1,'
        b"</lwm2m/5/0>"
    )
    assert objs.root_path == "/lwm2m/"
    assert objs.content_format == 11543
    assert objs.instances(5) == [0] and objs.has_object(3)
    assert linkformat.ObjectLink(5, None, "1.1") in objs.objects


def test_link_format_round_trip() -> None:
    links = [linkformat.ObjectLink(1, 0), linkformat.ObjectLink(5, None, "1.1")]
    parsed = linkformat.parse_registration_payload(linkformat.format_registration_payload(links))
    assert list(parsed.objects) == links


@pytest.mark.parametrize(
    "payload",
    [
        b"<3/0",
        b"3/0>",
        b"</3/0>junk",
        b"</3/0>;=1",
        b'</3/0>;ver="1.1',
        b"</a/0>",
        b"</3/0/1>",
        b"</70000/0>",
        b"</3/0>;ver=x",
        b"\xff",
        b'</x>;rt="oma.lwm2m",</3/0>',
        b"</3 /0>",
    ],
)
def test_bad_link_format_is_refused(payload: bytes) -> None:
    with pytest.raises(LinkFormatError):
        linkformat.parse_registration_payload(payload)


# --- TLV --------------------------------------------------------------------------------------


def test_tlv_known_vector_single_integer_resource() -> None:
    # Resource 3 (State) = 2: type 0b11000001, id 3, value 0x02.
    assert tlv.encode_tlv({(5, 0, 3): 2}, (5, 0, 3)) == bytes([0xC1, 0x03, 0x02])
    assert tlv.decode_tlv(bytes([0xC1, 0x03, 0x02]), (5, 0, 3)) == {(5, 0, 3): 2}


def test_tlv_instance_with_multiple_resource_and_long_string() -> None:
    values = {
        (3, 0, 0): "A" * 300,  # 16-bit length
        (3, 0, 13): 1_700_000_000,
        (5, 0, 8, 0): 0,
        (5, 0, 8, 1): 1,
    }
    three = {p: v for p, v in values.items() if p[0] == 3}
    assert tlv.decode_tlv(tlv.encode_tlv(three, (3, 0)), (3, 0)) == three
    five = {p: v for p, v in values.items() if p[0] == 5}
    assert tlv.decode_tlv(tlv.encode_tlv(five, (5, 0, 8)), (5, 0, 8)) == five
    # Object-level read: wrapped in object instances.
    assert tlv.decode_tlv(tlv.encode_tlv(three, (3,)), (3,)) == three


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (b"\xc1\x03", (5, 0, 3)),  # truncated value
        (b"\xc8\x03", (5, 0, 3)),  # truncated length
        (b"\xe1", (5, 0, 3)),  # truncated 16-bit identifier
        (b"\xc9\x03\x01\x02", (5, 0, 3)),  # short length bits with explicit length
        (b"\xc1\x04\x02", (5, 0, 3)),  # another resource than asked
        (b"\xc1\x03\x02\xc1\x03\x02", (5, 0)),  # duplicate resource
        (b"\x01\x00\x00", (3, 0)),  # object instance nested? (kind 0 with id 0, length 1 short)
        (b"\xc3\x03\x00\x00\x02", (5, 0, 3)),  # 3-byte integer
        (b"\x42\x00\xc1\x00\x01", (5, 0)),  # resource value inside a resource instance list
    ],
)
def test_bad_tlv_is_refused(payload: bytes, path: tuple[int, ...]) -> None:
    with pytest.raises((TLVError, ContentFormatError)):
        tlv.decode_tlv(payload, path)


# --- SenML ------------------------------------------------------------------------------------


def test_senml_json_base_name_and_value_kinds() -> None:
    payload = (
        b'[{"bn":"/3/0/","n":"0","vs":"Acme"},{"n":"13","v":1700000000.0},'
        b'{"bn":"/5/0/","n":"3","v":1},{"n":"0","vd":"AQID"}]'
    )
    assert senml.decode_senml_json(payload) == {
        (3, 0, 0): "Acme",
        (3, 0, 13): 1_700_000_000,
        (5, 0, 3): 1,
        (5, 0, 0): b"\x01\x02\x03",
    }


def test_senml_cbor_uses_integer_labels_and_byte_strings() -> None:
    values = {(5, 0, 0): b"\x00\xff", (5, 0, 1): "coap://x/fw", (5, 0, 3): 0}
    encoded = senml.encode_senml_cbor(values)
    assert cbor2.loads(encoded)[0] == {0: "/5/0/0", 8: b"\x00\xff"}
    assert senml.decode_senml_cbor(encoded) == values


@pytest.mark.parametrize(
    "payload",
    [
        b"{}",
        b"[1]",
        b'[{"n":"/3/0/0"}]',  # no value
        b'[{"n":"/3/0/0","vs":"a","v":1}]',  # two values
        b'[{"n":"/3/0/13","vs":"x"}]',  # string where integer belongs
        b'[{"n":"/5/0/3","v":1.5}]',  # non-integer state
        b'[{"n":"/3/0","vs":"x"}]',  # not a resource
        b'[{"n":"/a/0/0","vs":"x"}]',
        b'[{"n":"/3/0/0","vs":"x","zz":1}]',  # unknown field
        b'[{"n":"/3/0/0","vs":"a"},{"n":"/3/0/0","vs":"b"}]',  # duplicate
        b'[{"n":"/5/0/0","vd":"***"}]',
        b'[{"n":"/5/0/3","v":NaN}]',
        b"[",
        b'[{"n":"/5/0/3","vb":1}]',
    ],
)
def test_bad_senml_json_is_refused(payload: bytes) -> None:
    with pytest.raises(SenMLError):
        senml.decode_senml_json(payload)


@pytest.mark.parametrize(
    "obj",
    [
        {0: "/5/0/3"},
        [{0: "/5/0/3", 2: "x"}],
        [{99: 1}],
        [{True: 1}],
        [{0: "/5/0/0", 8: "text-not-bytes"}],
        [{0: "/5/0/3", 2: 1, "n": "/5/0/3"}],
    ],
)
def test_bad_senml_cbor_is_refused(obj: object) -> None:
    with pytest.raises(SenMLError):
        senml.decode_senml_cbor(cbor2.dumps(obj))


def test_senml_cbor_garbage_is_refused() -> None:
    with pytest.raises(SenMLError):
        senml.decode_senml_cbor(b"\x9f\xff\xff")


# --- text / opaque / paths ----------------------------------------------------------------------


def test_text_and_opaque() -> None:
    assert content.decode(content.CT_TEXT, b"2", (5, 0, 3)) == {(5, 0, 3): 2}
    assert content.decode(content.CT_TEXT, b"coap://h/x", (5, 0, 1)) == {(5, 0, 1): "coap://h/x"}
    assert content.decode(content.CT_OPAQUE, b"\x00\x01", (5, 0, 0)) == {(5, 0, 0): b"\x00\x01"}
    assert content.encode(content.CT_TEXT, {(5, 0, 3): 1}, (5, 0, 3)) == b"1"


@pytest.mark.parametrize(
    ("fmt", "payload", "path"),
    [
        (content.CT_TEXT, b"x", (5, 0, 3)),
        (content.CT_TEXT, b"\xff", (3, 0, 0)),
        (content.CT_TEXT, b"1", (5, 0)),
        (content.CT_TEXT, b"1", (5, 0, 0)),  # opaque as text
        (content.CT_OPAQUE, b"1", (5,)),
        (9999, b"", (5, 0, 3)),
    ],
)
def test_bad_text_or_format_is_refused(fmt: int, payload: bytes, path: tuple[int, ...]) -> None:
    with pytest.raises(ContentFormatError):
        content.decode(fmt, payload, path)


@pytest.mark.parametrize("text", ["", "5/0", "/5/x", "/1/2/3/4/5", "/70000", "/-1"])
def test_bad_path(text: str) -> None:
    with pytest.raises(PathError):
        content.parse_path(text)


# --- property tests -----------------------------------------------------------------------------

ids = st.integers(0, 65535)
values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.booleans(),
    st.builds(ObjLink, ids, ids),
)
# Unknown resources (object 3000+) carry any value type in SenML.
senml_values = st.dictionaries(
    st.tuples(st.integers(3000, 3010), st.integers(0, 3), ids), values, min_size=1, max_size=8
)


@given(senml_values)
def test_senml_round_trips(data: dict[tuple[int, ...], object]) -> None:
    assert senml.decode_senml_json(senml.encode_senml_json(data)) == data  # type: ignore[arg-type]
    assert senml.decode_senml_cbor(senml.encode_senml_cbor(data)) == data  # type: ignore[arg-type]


@given(st.dictionaries(ids, st.binary(max_size=300), min_size=1, max_size=6))
def test_tlv_round_trips_opaque_instance(data: dict[int, bytes]) -> None:
    flat = {(3000, 0, rid): value for rid, value in data.items()}
    assert tlv.decode_tlv(tlv.encode_tlv(flat, (3000, 0)), (3000, 0)) == flat


PATHS = [(3,), (3, 0), (5, 0, 3), (5, 0, 8), (5, 0, 8, 1), (3000, 1)]


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from(PATHS))
def test_fuzz_decoders_raise_only_lwm2m_errors(data: bytes, path: tuple[int, ...]) -> None:
    for decode in (
        lambda: tlv.decode_tlv(data, path),
        lambda: senml.decode_senml_json(data),
        lambda: senml.decode_senml_cbor(data),
        lambda: content.decode(content.CT_TEXT, data, path),
        lambda: linkformat.parse_registration_payload(data),
    ):
        with contextlib.suppress(LwM2MError):
            decode()


@settings(max_examples=200)
@given(st.text(max_size=120))
def test_fuzz_link_format_text(text: str) -> None:
    with contextlib.suppress(LwM2MError):
        linkformat.parse_registration_payload(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200)
@given(
    st.recursive(
        st.none()
        | st.integers()
        | st.text(max_size=8)
        | st.binary(max_size=8)
        | st.floats()
        | st.booleans(),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(st.integers(-8, 10) | st.text(max_size=4), c, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_fuzz_senml_structures(obj: object) -> None:
    for fn, data in ((senml.decode_senml_cbor, cbor2.dumps(obj)),):
        with contextlib.suppress(LwM2MError):
            fn(data)
