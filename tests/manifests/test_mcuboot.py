"""MCUboot parser against images produced by upstream imgtool, plus every refusal path and fuzzing.

Valid inputs always come from imgtool so the parser is checked against the real format; broken
inputs are derived from those images by patching bytes or re-assembling their TLV areas.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests.images import mcuboot
from manifests.images.mcuboot import (
    BadMagicError,
    BadTlvInfoMagicError,
    BodyOverrunError,
    DuplicateTlvError,
    EmptyImageError,
    HeaderOverrunError,
    ImageError,
    ImageHashMismatchError,
    InvalidHeaderSizeError,
    MissingHashTlvError,
    TlvAreaOverrunError,
    TlvAreaSizeError,
    TlvLengthError,
    TlvOverrunError,
    TlvType,
    TruncatedHeaderError,
    TruncatedTlvAreaError,
    UnprotectedTlvError,
    ingest_image,
    parse_image,
)
from tests.helpers.imgtool import build_mcuboot_image, generate_key

PAYLOAD = bytes(range(256)) * 8 + b"firmware-end"
VENDOR_DOMAIN = "acme.example"
CLASS_NAME = "thermo-v2"
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _image_storage() -> None:
    """Shadow the Django-settings fixture from conftest: this module is pure and runs without
    Django (``pytest -p no:django``)."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imgtool")


@pytest.fixture(scope="module")
def ec_key(workdir: Path) -> Path:
    return generate_key(workdir, key_type="ecdsa-p256")


@pytest.fixture(scope="module")
def signed_image(workdir: Path, ec_key: Path) -> bytes:
    """ECDSA P-256 signed, with security counter and vendor/class UUIDs (protected area)."""
    return build_mcuboot_image(
        workdir,
        payload=PAYLOAD,
        version="1.2.3+4",
        security_counter=7,
        key_pem_path=ec_key,
        vendor_id=VENDOR_DOMAIN,
        class_id=CLASS_NAME,
    )


@pytest.fixture(scope="module")
def unsigned_image(workdir: Path) -> bytes:
    """Hash TLV only: no protected area at all."""
    return build_mcuboot_image(workdir, payload=PAYLOAD, version="2.0.1")


# --------------------------------------------------------------------------- re-assembly


@dataclass
class Tlv:
    type: int
    value: bytes
    protected: bool


def split(image: bytes) -> tuple[bytes, list[Tlv]]:
    """Header+body and the TLVs of a well-formed image (trusted: it came from imgtool)."""
    info = parse_image(image)
    assert info.hdr_size is not None and info.img_size is not None
    body_end = info.hdr_size + info.img_size
    tlvs = [
        Tlv(t.type, image[t.offset + 4 : t.offset + 4 + t.length], t.protected) for t in info.tlvs
    ]
    return image[:body_end], tlvs


def assemble(head: bytes, tlvs: list[Tlv]) -> bytes:
    """Lay TLVs out as imgtool does, fixing up ih_protect_tlv_size and both info headers."""

    def area(magic: int, items: list[Tlv]) -> bytes:
        body = b"".join(struct.pack("<HH", t.type, len(t.value)) + t.value for t in items)
        return struct.pack("<HH", magic, 4 + len(body)) + body

    prot = [t for t in tlvs if t.protected]
    unprot = [t for t in tlvs if not t.protected]
    prot_area = area(0x6908, prot) if prot else b""
    header = bytearray(head)
    struct.pack_into("<H", header, 10, len(prot_area))
    return bytes(header) + prot_area + area(0x6907, unprot)


def edit_tlvs(image: bytes, edit: Callable[[list[Tlv]], list[Tlv]]) -> bytes:
    head, tlvs = split(image)
    return assemble(head, edit(tlvs))


def patch(image: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(image)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def layout(image: bytes) -> tuple[int, int]:
    """(end of body, start of unprotected TLV info) of a well-formed image."""
    _, _, hdr_size, prot, img_size = struct.unpack_from("<IIHHI", image)
    return hdr_size + img_size, hdr_size + img_size + prot


# --------------------------------------------------------------------------- valid images


def test_signed_image_fields(signed_image: bytes, ec_key: Path) -> None:
    info = ingest_image(signed_image)

    assert info.kind == "mcuboot"
    assert info.size == len(signed_image)
    assert info.sha256 == hashlib.sha256(signed_image).hexdigest()
    assert info.version == "1.2.3+4"
    assert info.version_tuple == (1, 2, 3, 4)
    assert info.hdr_size == 0x200
    assert info.img_size == len(PAYLOAD)
    assert signed_image[0x200 : 0x200 + len(PAYLOAD)] == PAYLOAD
    assert info.load_addr == 0 and info.flags == 0
    assert info.security_counter == 7
    assert info.hash_ok is True
    assert info.hash_algorithm == "sha256"
    assert info.hash_tlv == info.computed_hash and info.hash_tlv is not None
    assert len(info.hash_tlv) == 32
    assert info.signature_types == (TlvType.ECDSA_SIG,) == (0x22,)
    assert info.is_signed and not info.is_encrypted
    assert info.trailing_size == 0

    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, VENDOR_DOMAIN)
    assert info.vendor_uuid == vendor
    assert info.class_uuid == uuid.uuid5(vendor, CLASS_NAME)

    # imgtool's KEYHASH is SHA-256 over the DER SubjectPublicKeyInfo of the signing key.
    private = serialization.load_pem_private_key(ec_key.read_bytes(), password=None)
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert info.key_hash == hashlib.sha256(spki).digest()
    assert info.key_hashes == (info.key_hash,)

    assert [(t.type, t.length, t.protected) for t in info.tlvs] == [
        (0x50, 4, True),
        (0x74, 16, True),
        (0x75, 16, True),
        (0x10, 32, False),
        (0x01, 32, False),
        (0x22, info.tlvs[-1].length, False),
    ]
    assert info.protect_tlv_size == 4 + (4 + 4) + 2 * (4 + 16)


def test_signature_covers_exactly_the_hashed_region(signed_image: bytes, ec_key: Path) -> None:
    """The ECDSA signature verifies over the same bytes we hash: our region boundaries are right."""
    info = parse_image(signed_image)
    assert info.hdr_size is not None and info.img_size is not None
    assert info.protect_tlv_size is not None
    region = signed_image[: info.hdr_size + info.img_size + info.protect_tlv_size]
    sig_tlv = info.tlvs[-1]
    signature = signed_image[sig_tlv.offset + 4 : sig_tlv.offset + 4 + sig_tlv.length]
    private = serialization.load_pem_private_key(ec_key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    private.public_key().verify(signature, region, ec.ECDSA(hashes.SHA256()))
    assert hashlib.sha256(region).digest() == info.hash_tlv


def test_unsigned_image_without_protected_area(unsigned_image: bytes) -> None:
    info = ingest_image(unsigned_image)
    assert info.version == "2.0.1+0"
    assert info.version_tuple == (2, 0, 1, 0)
    assert info.protect_tlv_size == 0
    assert info.security_counter is None
    assert info.vendor_uuid is None and info.class_uuid is None
    assert info.key_hash is None and info.key_hashes == ()
    assert info.signature_types == () and not info.is_signed
    assert [(t.type, t.protected) for t in info.tlvs] == [(0x10, False)]
    assert info.hash_ok is True


@pytest.mark.parametrize(
    ("sha", "algorithm", "length"), [("384", "sha384", 48), ("512", "sha512", 64)]
)
def test_other_hash_algorithms(tmp_path: Path, sha: str, algorithm: str, length: int) -> None:
    image = build_mcuboot_image(tmp_path, payload=PAYLOAD, extra_args=["--sha", sha])
    info = ingest_image(image)
    assert info.hash_algorithm == algorithm
    assert info.hash_tlv is not None and len(info.hash_tlv) == length
    assert info.hash_ok is True


def test_raw_uuids_and_max_security_counter(tmp_path: Path) -> None:
    vid = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    cid = uuid.UUID("0fedcba9-8765-4321-0fed-cba987654321")
    image = build_mcuboot_image(
        tmp_path,
        payload=b"\x01" * 100,
        version="255.255.65535+4294967295",
        security_counter=0xFFFF_FFFF,
        vendor_id=str(vid),
        class_id=str(cid),
    )
    info = ingest_image(image)
    assert (info.vendor_uuid, info.class_uuid) == (vid, cid)
    assert info.security_counter == 0xFFFF_FFFF
    assert info.version == "255.255.65535+4294967295"


def test_full_public_key_tlv(tmp_path: Path, ec_key: Path) -> None:
    image = build_mcuboot_image(
        tmp_path,
        payload=PAYLOAD,
        key_pem_path=ec_key,
        extra_args=["--public-key-format", "full"],
    )
    info = ingest_image(image)
    assert [t.type for t in info.tlvs] == [TlvType.SHA256, TlvType.PUBKEY, TlvType.ECDSA_SIG]
    assert info.key_hash is None
    assert info.is_signed


def test_padded_image_reports_trailer(tmp_path: Path) -> None:
    slot = 0x10000
    image = build_mcuboot_image(tmp_path, payload=PAYLOAD, slot_size=slot, extra_args=["--pad"])
    info = ingest_image(image)
    assert info.size == slot
    assert info.trailing_size > 0
    assert info.hash_ok is True


def test_vendor_tlv_in_unprotected_area_is_accepted(unsigned_image: bytes) -> None:
    image = edit_tlvs(unsigned_image, lambda tlvs: [*tlvs, Tlv(0x00A0, b"vendor", False)])
    info = ingest_image(image)
    assert info.tlvs[-1].type == 0xA0 and info.tlvs[-1].name == "0x00a0"
    assert info.hash_ok is True


def test_to_json_dict_is_json_and_hex(signed_image: bytes) -> None:
    info = parse_image(signed_image)
    data = json.loads(json.dumps(info.to_json_dict()))
    assert data["kind"] == "mcuboot"
    assert data["version"] == "1.2.3+4"
    assert data["security_counter"] == 7
    assert data["hash_ok"] is True
    assert bytes.fromhex(data["hash_tlv"]) == info.hash_tlv
    assert data["vendor_uuid"] == str(info.vendor_uuid)
    assert data["signature_types"] == ["ECDSA_SIG"]
    assert data["tlvs"][0] == {
        "type": 0x50,
        "name": "SEC_CNT",
        "length": 4,
        "protected": True,
        "offset": info.tlvs[0].offset,
    }


# --------------------------------------------------------------------------- raw images


def test_raw_binary() -> None:
    data = b"\x7fELF not an mcuboot image" * 10
    info = ingest_image(data)
    assert info.kind == "raw"
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.version is None and info.security_counter is None and info.hash_ok is None
    assert info.to_json_dict() == {"kind": "raw", "size": len(data), "sha256": info.sha256}


def test_bad_magic_is_raw_for_ingest_but_error_for_parse(signed_image: bytes) -> None:
    data = patch(signed_image, 0, "<I", 0x12345678)
    assert ingest_image(data).kind == "raw"
    with pytest.raises(BadMagicError, match="0x12345678"):
        parse_image(data)


def test_empty_upload_refused() -> None:
    with pytest.raises(EmptyImageError):
        ingest_image(b"")
    with pytest.raises(TruncatedHeaderError):
        parse_image(b"")


def test_bytearray_and_memoryview_accepted(unsigned_image: bytes) -> None:
    assert ingest_image(bytearray(unsigned_image)) == ingest_image(unsigned_image)
    assert parse_image(memoryview(unsigned_image)).hash_ok is True


# --------------------------------------------------------------------------- tampering


def test_tampered_body(signed_image: bytes) -> None:
    data = bytearray(signed_image)
    data[0x200 + 100] ^= 0x01
    info = parse_image(bytes(data))
    assert info.hash_ok is False
    assert info.computed_hash != info.hash_tlv
    with pytest.raises(ImageHashMismatchError) as exc:
        ingest_image(bytes(data))
    assert exc.value.code == "image.hash_mismatch"
    assert ingest_image(bytes(data), require_valid_hash=False).hash_ok is False


def test_tampered_security_counter_breaks_hash(signed_image: bytes) -> None:
    """The protected area is inside the hash: raising the counter is detected."""
    sec = parse_image(signed_image).tlvs[0]
    data = patch(signed_image, sec.offset + 4, "<I", 8)
    info = parse_image(data)
    assert info.security_counter == 8
    assert info.hash_ok is False
    with pytest.raises(ImageHashMismatchError):
        ingest_image(data)


def test_tampered_header_version_breaks_hash(signed_image: bytes) -> None:
    data = patch(signed_image, 20, "<B", 9)
    assert parse_image(data).version == "9.2.3+4"
    with pytest.raises(ImageHashMismatchError):
        ingest_image(data)


def test_unprotected_area_is_not_hashed(signed_image: bytes) -> None:
    """Signature bytes are outside the hash (a bad signature is the device's call, not ours)."""
    data = bytearray(signed_image)
    data[-1] ^= 0xFF
    assert parse_image(bytes(data)).hash_ok is True


def test_encrypted_flag_with_mismatch_explains(unsigned_image: bytes) -> None:
    data = patch(unsigned_image, 16, "<I", 0x4)
    info = parse_image(data)
    assert info.is_encrypted and info.hash_ok is False
    with pytest.raises(ImageHashMismatchError, match="encrypted"):
        ingest_image(data)


# --------------------------------------------------------------------------- refusal paths


def _sec_cnt(tlvs: list[Tlv]) -> Tlv:
    return next(t for t in tlvs if t.type == TlvType.SEC_CNT)


def _signed_cases() -> list[tuple[str, Callable[[bytes], bytes], type[ImageError]]]:
    def unprot_info(image: bytes) -> int:
        return layout(image)[1]

    return [
        ("truncated-header", lambda d: d[:31], TruncatedHeaderError),
        ("magic-only", lambda d: d[:4], TruncatedHeaderError),
        ("bad-magic", lambda d: patch(d, 0, "<I", 0xDEADBEEF), BadMagicError),
        ("big-endian-magic", lambda d: patch(d, 0, ">I", 0x96F3B83D), BadMagicError),
        ("legacy-v1-magic", lambda d: patch(d, 0, "<I", 0x96F3B83C), BadMagicError),
        ("hdr-size-below-32", lambda d: patch(d, 8, "<H", 16), InvalidHeaderSizeError),
        ("hdr-size-beyond-file", lambda d: patch(d, 8, "<H", 0xFFFF), HeaderOverrunError),
        ("img-size-beyond-file", lambda d: patch(d, 12, "<I", 0xFFFF_FFFF), BodyOverrunError),
        ("file-cut-in-body", lambda d: d[: 0x200 + 10], BodyOverrunError),
        ("file-cut-at-body-end", lambda d: d[: layout(d)[0]], TruncatedTlvAreaError),
        ("file-cut-in-prot-info", lambda d: d[: layout(d)[0] + 2], TruncatedTlvAreaError),
        ("file-cut-at-unprot-info", lambda d: d[: unprot_info(d)], TruncatedTlvAreaError),
        (
            "bad-protected-info-magic",
            lambda d: patch(d, layout(d)[0], "<H", 0x6907),
            BadTlvInfoMagicError,
        ),
        (
            "bad-unprotected-info-magic",
            lambda d: patch(d, unprot_info(d), "<H", 0x1234),
            BadTlvInfoMagicError,
        ),
        (
            "protect-size-disagrees-with-info",
            lambda d: patch(d, 10, "<H", struct.unpack_from("<H", d, 10)[0] + 4),
            TlvAreaSizeError,
        ),
        ("protected-area-undeclared", lambda d: patch(d, 10, "<H", 0), TlvAreaSizeError),
        ("protect-size-below-info", lambda d: patch(d, 10, "<H", 2), TlvAreaSizeError),
        (
            "unprot-total-below-info",
            lambda d: patch(d, unprot_info(d) + 2, "<H", 2),
            TlvAreaSizeError,
        ),
        ("file-cut-in-tlv-area", lambda d: d[:-1], TlvAreaOverrunError),
        (
            "unprot-total-beyond-file",
            lambda d: patch(d, unprot_info(d) + 2, "<H", 0xFFFF),
            TlvAreaOverrunError,
        ),
        (
            "tlv-value-beyond-area",
            lambda d: patch(d, unprot_info(d) + 4 + 2, "<H", 0x7FFF),
            TlvOverrunError,
        ),
        (
            "protected-tlv-spills-into-unprotected",
            lambda d: patch(d, layout(d)[0] + 4 + 2, "<H", 0x40),
            TlvOverrunError,
        ),
        (
            "partial-tlv-header",
            lambda d: patch(
                d + b"\x10\x00",
                unprot_info(d) + 2,
                "<H",
                struct.unpack_from("<H", d, unprot_info(d) + 2)[0] + 2,
            ),
            TlvOverrunError,
        ),
        (
            "sha256-length-31",
            lambda d: edit_tlvs(
                d,
                lambda ts: [
                    Tlv(t.type, t.value[:31], t.protected) if t.type == TlvType.SHA256 else t
                    for t in ts
                ],
            ),
            TlvLengthError,
        ),
        (
            "sec-cnt-length-8",
            lambda d: edit_tlvs(
                d,
                lambda ts: [
                    Tlv(t.type, t.value + b"\0" * 4, True) if t.type == TlvType.SEC_CNT else t
                    for t in ts
                ],
            ),
            TlvLengthError,
        ),
        (
            "vendor-uuid-length-15",
            lambda d: edit_tlvs(
                d,
                lambda ts: [
                    Tlv(t.type, t.value[:15], True) if t.type == TlvType.UUID_VID else t for t in ts
                ],
            ),
            TlvLengthError,
        ),
        (
            "duplicate-security-counter",
            lambda d: edit_tlvs(d, lambda ts: [_sec_cnt(ts), *ts]),
            DuplicateTlvError,
        ),
        (
            "duplicate-sha256",
            lambda d: edit_tlvs(d, lambda ts: [*ts, next(t for t in ts if t.type == 0x10)]),
            DuplicateTlvError,
        ),
        (
            "sha256-and-sha512",
            lambda d: edit_tlvs(d, lambda ts: [*ts, Tlv(TlvType.SHA512, b"\0" * 64, False)]),
            DuplicateTlvError,
        ),
        (
            "security-counter-unprotected",
            lambda d: edit_tlvs(
                d,
                lambda ts: [
                    Tlv(t.type, t.value, t.type != TlvType.SEC_CNT and t.protected) for t in ts
                ],
            ),
            UnprotectedTlvError,
        ),
        (
            "vendor-uuid-unprotected",
            lambda d: edit_tlvs(
                d,
                lambda ts: [
                    Tlv(t.type, t.value, t.type != TlvType.UUID_VID and t.protected) for t in ts
                ],
            ),
            UnprotectedTlvError,
        ),
        (
            "no-hash-tlv",
            lambda d: edit_tlvs(d, lambda ts: [t for t in ts if t.type != TlvType.SHA256]),
            MissingHashTlvError,
        ),
    ]


SIGNED_CASES = _signed_cases()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in SIGNED_CASES],
)
def test_refusals(
    signed_image: bytes, mutate: Callable[[bytes], bytes], expected: type[ImageError]
) -> None:
    data = mutate(signed_image)
    with pytest.raises(expected) as exc:
        parse_image(data)
    assert type(exc.value) is expected
    assert exc.value.code.startswith("image.")
    assert exc.value.offset is not None
    assert f"at offset 0x{exc.value.offset:x}" in str(exc.value)
    assert "\n" not in str(exc.value)
    # Anything carrying an MCUboot magic is parsed strictly by ingest as well, except that a
    # wrong magic simply means "not MCUboot" and the file is filed as raw.
    if expected is BadMagicError and data[:4] == b"\xef\xbe\xad\xde":
        assert ingest_image(data).kind == "raw"
    else:
        with pytest.raises(expected):
            ingest_image(data)


def test_refusals_unsigned_without_protected_area(unsigned_image: bytes) -> None:
    body_end = layout(unsigned_image)[0]
    with pytest.raises(TruncatedTlvAreaError, match="unprotected"):
        parse_image(unsigned_image[:body_end])
    stray = patch(unsigned_image, body_end, "<H", 0x6908)
    with pytest.raises(TlvAreaSizeError, match="ih_protect_tlv_size is 0"):
        parse_image(stray)


def test_error_classes_are_documented_and_distinct() -> None:
    classes = [
        obj
        for obj in vars(mcuboot).values()
        if isinstance(obj, type) and issubclass(obj, ImageError)
    ]
    assert len(classes) >= 15
    codes = [cls.code for cls in classes]
    assert len(set(codes)) == len(codes)
    for cls in classes:
        assert cls.__doc__ and "\n" not in cls.__doc__.strip(), cls


def test_error_pickles_with_offset() -> None:
    err = TlvOverrunError("boom", offset=0x42)
    clone = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own object
    assert type(clone) is TlvOverrunError
    assert str(clone) == str(err) == "boom (at offset 0x42)"
    assert clone.offset == 0x42


# --------------------------------------------------------------------------- fuzzing


def _only_image_errors(data: bytes) -> None:
    for call in (parse_image, ingest_image, lambda d: ingest_image(d, require_valid_hash=False)):
        try:
            info = call(data)
        except ImageError as exc:
            assert isinstance(exc.code, str)
            continue
        assert info.size == len(data)
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        json.dumps(info.to_json_dict())


@FUZZ
@given(st.binary(max_size=1024))
def test_fuzz_random_bytes(data: bytes) -> None:
    _only_image_errors(data)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_behind_magic(tail: bytes) -> None:
    _only_image_errors(b"\x3d\xb8\xf3\x96" + tail)


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_signed_image(signed_image: bytes, data: st.DataObject) -> None:
    image = bytearray(signed_image)
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(image) - 1), st.integers(0, 255)), min_size=1, max_size=8
        )
    )
    for index, value in flips:
        image[index] = value
    cut = data.draw(st.none() | st.integers(0, len(image)))
    _only_image_errors(bytes(image if cut is None else image[:cut]))


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_tlv_area(signed_image: bytes, data: st.DataObject) -> None:
    """Concentrate mutations where the parser is most intricate: the TLV areas."""
    image = bytearray(signed_image)
    start = layout(signed_image)[0]
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(start, len(image) - 1), st.integers(0, 255)),
            min_size=1,
            max_size=4,
        )
    )
    for index, value in flips:
        image[index] = value
    extra = data.draw(st.binary(max_size=16))
    _only_image_errors(bytes(image) + extra)


@FUZZ
@given(
    hdr_size=st.integers(0, 0xFFFF),
    protect=st.integers(0, 0xFFFF),
    img_size=st.integers(0, 0xFFFF_FFFF) | st.integers(0, 0x1000),
)
def test_fuzz_header_sizes(signed_image: bytes, hdr_size: int, protect: int, img_size: int) -> None:
    image = bytearray(signed_image)
    struct.pack_into("<HHI", image, 8, hdr_size, protect, img_size)
    _only_image_errors(bytes(image))
