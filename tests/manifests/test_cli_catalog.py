"""``manage.py vendor|devclass|image|manifest``: the catalog CLI reports what it stored, and a
refused command exits 1 with the service's stable code and writes nothing. Every acting command
names its user; vendors and classes need an admin, images and manifests an author or admin."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.models import AuditEvent
from manifests import services, suit
from manifests.models import DeviceClass, FirmwareImage, Manifest, Vendor
from tests.helpers.imgtool import DEFAULT_HEADER_SIZE, build_mcuboot_image

pytestmark = pytest.mark.django_db

COUNTED = (Vendor, DeviceClass, FirmwareImage, Manifest, AuditEvent)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """The personas' passwords are never checked here, and PBKDF2 costs ~0.2 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def cli(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in COUNTED}


def refused(*args: str, code: str) -> str:
    """The command exits 1 with ``[code]`` in its message and changes no row."""
    before = counts()
    with pytest.raises(CommandError) as caught:
        cli(*args)
    assert caught.value.returncode == 1
    assert f"[{code}]" in str(caught.value)
    assert counts() == before
    return str(caught.value)


@pytest.fixture
def author(author: Any, catalog_admin: Any) -> Any:
    """The shared persona, holding the author role (images and manifests need it)."""
    services.role_grant(
        user=author.user,
        role="author",
        actor=catalog_admin,
        now=timezone.now() - dt.timedelta(hours=1),
    )
    return author


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "app-1.4.0.bin"
    path.write_bytes(
        build_mcuboot_image(tmp_path, payload=b"\x5a" * 4096, version="1.4.0+7", security_counter=3)
    )
    return path


@pytest.fixture
def author_files(tmp_path: Path, author: Any) -> tuple[Path, Path]:
    priv, pub = tmp_path / "alice.pem", tmp_path / "alice.pub.pem"
    priv.write_bytes(suit.private_key_pem(author.private_key))
    pub.write_text(author.public_pem)
    return priv, pub


@pytest.fixture
def author_key(author: Any, author_files: tuple[Path, Path]) -> Any:
    cli("key", "add", "--user", author.user.username, "--public-key", str(author_files[1]))
    return author.user.signing_keys.get()


def make_envelope(
    tmp_path: Path, image: Path, key: Path, *, name: str = "app.suit", **overrides: str
) -> Path:
    out = tmp_path / name
    values = {
        "--vendor-domain": "acme.example",
        "--class": "thermo-v2",
        "--version": "1.4.0+7",
        "--sequence": "12",
        "--security-counter": "3",
        "--image": str(image),
        "--uri": "coap://fw.example/app.bin",
        "--key": str(key),
        "--out": str(out),
    }
    values.update(overrides)
    cli("suit", "create", *[part for item in values.items() for part in item])
    return out


# --- vendor / devclass ----------------------------------------------------------------------
def test_vendor_add_derives_the_uuid_from_the_domain_and_lists_it(catalog_admin: Any):
    output = cli(
        "vendor", "add", "--name", "Acme Sensors", "--domain", "Acme.Example.",
        "--user", catalog_admin.username,
    )  # fmt: skip
    uuid = suit.vendor_id("acme.example")
    assert output.strip() == f"vendor acme.example id {uuid}"
    assert Vendor.objects.get().uuid == uuid
    assert str(uuid) in cli("vendor", "list") and "Acme Sensors" in cli("vendor", "list")
    assert AuditEvent.objects.filter(action="vendor.create").count() == 1


def test_duplicate_vendor_is_refused(vendor: Any, catalog_admin: Any):
    refused(
        "vendor", "add", "--name", "Again", "--domain", "ACME.example",
        "--user", catalog_admin.username,
        code="manifest.vendor_exists",
    )  # fmt: skip


def test_devclass_add_derives_the_class_uuid_and_lists_it(vendor: Any, catalog_admin: Any):
    output = cli(
        "devclass", "add", "--vendor-domain", "acme.example", "--name", "thermo-v3",
        "--component", "01", "--payload-format", "raw", "--user", catalog_admin.username,
    )  # fmt: skip
    device_class = DeviceClass.objects.get(name="thermo-v3")
    assert device_class.uuid == suit.class_id(vendor.uuid, "thermo-v3")
    assert str(device_class.uuid) in output
    assert (device_class.component_id, device_class.payload_format) == (["01"], "raw")
    listing = cli("devclass", "list")
    assert str(device_class.uuid) in listing and "raw" in listing


def test_devclass_manifest_profile_is_set_at_add_and_changed_with_set(
    vendor: Any, catalog_admin: Any
):
    output = cli(
        "devclass", "add", "--vendor-domain", "acme.example", "--name", "stock",
        "--manifest-profile", "standard", "--user", catalog_admin.username,
    )  # fmt: skip
    assert "manifest profile standard" in output
    assert DeviceClass.objects.get(name="stock").manifest_profile == "standard"
    output = cli(
        "devclass", "set", "--vendor-domain", "acme.example", "--name", "stock",
        "--manifest-profile", "extended", "--user", catalog_admin.username,
    )  # fmt: skip
    assert "manifest profile extended" in output
    row = DeviceClass.objects.get(name="stock")
    assert (row.manifest_profile, row.delivery) == ("extended", "image")
    assert "extended" in cli("devclass", "list")
    with pytest.raises(CommandError, match="--manifest-profile"):
        cli("devclass", "set", "--vendor-domain", "acme.example", "--name", "stock",
            "--user", catalog_admin.username)  # fmt: skip
    output = cli(
        "devclass", "set", "--vendor-domain", "acme.example", "--name", "stock",
        "--delta", "on", "--delta-compression", "lzma", "--user", catalog_admin.username,
    )  # fmt: skip
    assert "deltas on (lzma, sequential)" in output
    row = DeviceClass.objects.get(name="stock")
    assert (row.delta_updates, row.delta_compression) == (True, "lzma")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--vendor-domain", "nobody.example", "--name", "x"], "manifest.unknown_vendor"),
        (
            ["--vendor-domain", "acme.example", "--name", "thermo-v2"],
            "manifest.device_class_exists",
        ),
        (
            ["--vendor-domain", "acme.example", "--name", "y", "--component", "zz"],
            "manifest.component_mismatch",
        ),
    ],
    ids=["unknown-vendor", "duplicate", "bad-component"],
)
def test_devclass_add_refusals(device_class: Any, catalog_admin: Any, args: list[str], code: str):
    refused("devclass", "add", *args, "--user", catalog_admin.username, code=code)


# --- who may write the catalog --------------------------------------------------------------
@pytest.fixture
def other_author(django_user_model: Any, catalog_admin: Any) -> Any:
    """An author who owns no key the tests sign with."""
    user = django_user_model.objects.create_user(username="mallory-author", password=None)
    services.role_grant(
        user=user, role="author", actor=catalog_admin, now=timezone.now() - dt.timedelta(hours=1)
    )
    return user


def _user(persona: str, request: pytest.FixtureRequest) -> str:
    """``outsider`` holds no role; ``author`` and ``qa`` hold a role, not the one needed."""
    if persona == "qa":
        qa = request.getfixturevalue("approver_qa")
        services.role_grant(
            user=qa.user,
            role="qa",
            actor=request.getfixturevalue("catalog_admin"),
            now=timezone.now() - dt.timedelta(hours=1),
        )
        return str(qa.user.username)
    return str(request.getfixturevalue(persona).user.username)


@pytest.mark.parametrize("persona", ["outsider", "author"])
def test_vendor_add_by_a_non_admin_is_refused_and_writes_nothing(
    persona: str, request: pytest.FixtureRequest
):
    message = refused(
        "vendor", "add", "--name", "Evil", "--domain", "evil.example",
        "--user", _user(persona, request),
        code="approval.permission_denied",
    )  # fmt: skip
    assert "needs one of the roles admin for this action" in message


@pytest.mark.parametrize("persona", ["outsider", "author"])
def test_devclass_add_by_a_non_admin_is_refused_and_writes_nothing(
    vendor: Any, persona: str, request: pytest.FixtureRequest
):
    message = refused(
        "devclass", "add", "--vendor-domain", "acme.example", "--name", "thermo-evil",
        "--user", _user(persona, request),
        code="approval.permission_denied",
    )  # fmt: skip
    assert "needs one of the roles admin for this action" in message


@pytest.mark.parametrize("persona", ["outsider", "qa"])
def test_image_upload_by_a_non_author_is_refused_and_stores_nothing(
    image_file: Path, persona: str, request: pytest.FixtureRequest
):
    message = refused(
        "image", "upload", str(image_file), "--user", _user(persona, request),
        code="approval.permission_denied",
    )  # fmt: skip
    assert "needs one of the roles admin, author for this action" in message
    assert not services.image_storage().exists(hashlib.sha256(image_file.read_bytes()).hexdigest())


@pytest.mark.parametrize("persona", ["outsider", "qa"])
def test_manifest_import_by_a_non_author_is_refused_even_when_they_signed_it(
    tmp_path: Path,
    device_class: Any,
    image_file: Path,
    author: Any,
    persona: str,
    request: pytest.FixtureRequest,
):
    username = _user(persona, request)
    signer = request.getfixturevalue("approver_qa" if persona == "qa" else persona)
    key_path = tmp_path / "signer.pem"
    key_path.write_bytes(suit.private_key_pem(signer.private_key))
    (tmp_path / "signer.pub.pem").write_text(signer.public_pem)
    cli("key", "add", "--user", username, "--public-key", str(tmp_path / "signer.pub.pem"))
    cli("image", "upload", str(image_file), "--user", author.user.username)
    envelope = make_envelope(tmp_path, image_file, key_path)
    refused(
        "manifest", "import", str(envelope), "--user", username, code="approval.permission_denied"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["vendor", "add", "--name", "X", "--domain", "x.example"],
        ["devclass", "add", "--vendor-domain", "acme.example", "--name", "x"],
    ],
    ids=["vendor", "devclass"],
)
def test_catalog_add_by_an_unknown_user_is_refused(vendor: Any, command: list[str]):
    before = counts()
    with pytest.raises(CommandError, match="no user named 'mallory'") as caught:
        cli(*command, "--user", "mallory")
    assert caught.value.returncode == 1
    assert counts() == before


# --- image ----------------------------------------------------------------------------------
def test_image_upload_parses_the_mcuboot_header_and_is_idempotent(image_file: Path, author: Any):
    output = cli("image", "upload", str(image_file), "--user", author.user.username)
    digest = hashlib.sha256(image_file.read_bytes()).hexdigest()
    assert output.strip() == (
        f"image {digest} mcuboot {image_file.stat().st_size} bytes version 1.4.0+7 "
        "security counter 3"
    )
    again = cli("image", "upload", str(image_file), "--user", author.user.username)
    assert again == output
    image = FirmwareImage.objects.get()
    assert (image.filename, image.uploaded_by) == ("app-1.4.0.bin", author.user)
    assert services.image_storage().read(digest) == image_file.read_bytes()
    assert f"app-1.4.0.bin 1.4.0+7 ({digest[:12]})" in cli("image", "list")


def test_tampered_image_upload_is_refused_and_nothing_is_stored(
    tmp_path: Path, image_file: Path, author: Any
):
    tampered = bytearray(image_file.read_bytes())
    tampered[DEFAULT_HEADER_SIZE + 10] ^= 0xFF
    bad = tmp_path / "tampered.bin"
    bad.write_bytes(bytes(tampered))
    message = refused(
        "image", "upload", str(bad), "--user", author.user.username, code="manifest.invalid_image"
    )
    assert "hash" in message
    assert not services.image_storage().exists(hashlib.sha256(bytes(tampered)).hexdigest())


def test_oversized_image_upload_is_refused(settings: Any, tmp_path: Path, author: Any):
    settings.FIRMWARE_MAX_IMAGE_SIZE = 1024
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 1025)
    refused(
        "image", "upload", str(big), "--user", author.user.username, code="manifest.image_too_large"
    )


def test_image_upload_of_a_missing_file_or_by_an_unknown_user_is_refused(
    tmp_path: Path, image_file: Path, author: Any
):
    with pytest.raises(CommandError, match="cannot read") as caught:
        cli("image", "upload", str(tmp_path / "nope.bin"), "--user", author.user.username)
    assert caught.value.returncode == 1
    with pytest.raises(CommandError, match="no user named 'mallory'"):
        cli("image", "upload", str(image_file), "--user", "mallory")
    assert FirmwareImage.objects.count() == 0


# --- manifest -------------------------------------------------------------------------------
def test_manifest_import_keeps_the_exact_bytes_and_show_decodes_them(
    tmp_path: Path, device_class: Any, image_file: Path, author: Any, author_files, author_key
):
    cli("image", "upload", str(image_file), "--user", author.user.username)
    envelope = make_envelope(tmp_path, image_file, author_files[0])
    digest = suit.decode_envelope(envelope.read_bytes()).manifest_digest.hex()
    output = cli("manifest", "import", str(envelope), "--user", author.user.username)
    assert output.startswith(f"manifest {digest} ")
    manifest = Manifest.objects.get()
    assert manifest.envelope_bytes == envelope.read_bytes()
    assert (manifest.version, manifest.sequence_number, manifest.security_counter) == (
        "1.4.0+7",
        12,
        3,
    )
    assert manifest.author_key == author_key
    assert digest[:16] in cli("manifest", "list")
    shown = json.loads(cli("manifest", "show", digest[:10]))
    assert shown == json.loads(cli("suit", "inspect", str(envelope), "--json"))


def test_manifest_import_accepts_hex_text(
    tmp_path: Path, device_class: Any, image_file: Path, author: Any, author_files, author_key
):
    cli("image", "upload", str(image_file), "--user", author.user.username)
    envelope = make_envelope(tmp_path, image_file, author_files[0])
    as_hex = tmp_path / "app.suit.hex"
    as_hex.write_text(envelope.read_bytes().hex() + "\n")
    cli("manifest", "import", str(as_hex), "--user", author.user.username)
    assert Manifest.objects.get().envelope_bytes == envelope.read_bytes()


def test_manifest_show_of_an_unknown_or_ambiguous_prefix_is_refused(device_class: Any):
    with pytest.raises(CommandError, match="no manifests match") as caught:
        cli("manifest", "show", "abcdef")
    assert caught.value.returncode == 1


def _other_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "stranger.pem"
    path.write_bytes(suit.private_key_pem(suit.generate_private_key("ES256")))
    return path


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("garbage", "suit.input"),
        ("untrusted", "manifest.untrusted"),
        ("image-missing", "manifest.image_not_found"),
        ("unknown-vendor", "manifest.unknown_vendor"),
        ("unknown-class", "manifest.unknown_device_class"),
        ("wrong-component", "manifest.component_mismatch"),
        ("duplicate", "manifest.duplicate"),
        ("sequence-reused", "manifest.sequence_conflict"),
    ],
)
def test_manifest_import_refusals_write_nothing(
    tmp_path: Path,
    device_class: Any,
    image_file: Path,
    author: Any,
    author_files,
    author_key,
    case: str,
    code: str,
):
    cli("image", "upload", str(image_file), "--user", author.user.username)
    key = author_files[0]
    if case == "garbage":
        envelope = tmp_path / "garbage.suit"
        envelope.write_bytes(b"not a manifest")
    elif case == "untrusted":
        envelope = make_envelope(tmp_path, image_file, _other_key_file(tmp_path))
    elif case == "image-missing":
        other = tmp_path / "never-uploaded.bin"
        other.write_bytes(
            build_mcuboot_image(
                tmp_path, payload=b"\1" * 128, version="1.4.0+7", security_counter=3
            )
        )
        envelope = make_envelope(tmp_path, other, key)
    elif case == "unknown-vendor":
        envelope = make_envelope(tmp_path, image_file, key, **{"--vendor-domain": "x.example"})
    elif case == "unknown-class":
        envelope = make_envelope(tmp_path, image_file, key, **{"--class": "thermo-v9"})
    elif case == "wrong-component":
        envelope = make_envelope(tmp_path, image_file, key, **{"--component": "01"})
    else:
        first = make_envelope(tmp_path, image_file, key, name="first.suit")
        cli("manifest", "import", str(first), "--user", author.user.username)
        envelope = (
            first
            if case == "duplicate"
            else make_envelope(tmp_path, image_file, key, **{"--uri": "coap://fw.example/b"})
        )
    refused("manifest", "import", str(envelope), "--user", author.user.username, code=code)


def test_manifest_import_by_someone_else_than_the_key_owner_is_untrusted(
    tmp_path: Path, device_class: Any, image_file: Path, author: Any, other_author, author_files
):
    cli("image", "upload", str(image_file), "--user", author.user.username)
    cli("key", "add", "--user", author.user.username, "--public-key", str(author_files[1]))
    envelope = make_envelope(tmp_path, image_file, author_files[0])
    refused(
        "manifest", "import", str(envelope), "--user", other_author.username,
        code="manifest.untrusted",
    )  # fmt: skip
