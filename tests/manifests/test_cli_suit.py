"""``manage.py suit``: the local toolkit's CLI contract (files in, files out, exit status).

In-process through ``call_command`` for the facts; a handful of real subprocesses pin the exit
status and stderr a shell script sees (exit 1 with a one-line reason, never a traceback).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from django.core.management import CommandError, call_command

from manifests import suit
from tests.conftest import REPO_ROOT, SHARED_VECTORS
from tests.helpers.imgtool import DEFAULT_HEADER_SIZE, build_mcuboot_image

VENDOR_DOMAIN = "acme.example"
CLASS_NAME = "thermo-v2"
URI = "coap://fw.example/thermo-v2/1.4.0.bin"
EXPIRES = "2027-01-31T12:00:00Z"


def cli(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def refused(*args: str) -> str:
    """Run a command that must fail with exit status 1; returns its message."""
    with pytest.raises(CommandError) as caught:
        cli(*args)
    assert caught.value.returncode == 1
    return str(caught.value)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def inspect_json(path: Path) -> dict[str, Any]:
    return json.loads(cli("suit", "inspect", str(path), "--json"))


def keygen(directory: Path, name: str, alg: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    priv = directory / f"{name}.pem"
    cli("suit", "keygen", "--alg", alg, "--out", str(priv))
    return priv, directory / f"{name}.pub.pem"


def kid_of(pub: Path) -> str:
    return suit.kid_for_public_key(suit.load_public_key_pem(pub.read_bytes())).hex()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("suit-cli")


@pytest.fixture(scope="module")
def image(workdir: Path) -> Path:
    path = workdir / "app-1.4.0.bin"
    path.write_bytes(
        build_mcuboot_image(workdir, payload=b"\x5a" * 4096, version="1.4.0+7", security_counter=3)
    )
    return path


@pytest.fixture(scope="module")
def author_key(workdir: Path) -> tuple[Path, Path]:
    return keygen(workdir / "author", "author", "ES256")


@pytest.fixture(scope="module")
def qa_key(workdir: Path) -> tuple[Path, Path]:
    return keygen(workdir / "qa", "qa", "Ed25519")


def create_args(image: Path, key: Path, out: Path, **overrides: str) -> list[str]:
    values = {
        "--vendor-domain": VENDOR_DOMAIN,
        "--class": CLASS_NAME,
        "--version": "1.4.0+7",
        "--sequence": "12",
        "--security-counter": "3",
        "--image": str(image),
        "--uri": URI,
        "--expires": EXPIRES,
        "--key": str(key),
        "--out": str(out),
    }
    values.update(overrides)
    return ["suit", "create", *[part for item in values.items() for part in item]]


@pytest.fixture(scope="module")
def envelope(workdir: Path, image: Path, author_key: tuple[Path, Path]) -> Path:
    out = workdir / "app-1.4.0.suit"
    cli(*create_args(image, author_key[0], out))
    return out


@pytest.fixture(scope="module")
def cosigned(workdir: Path, envelope: Path, qa_key: tuple[Path, Path]) -> Path:
    out = workdir / "app-1.4.0.qa.suit"
    cli("suit", "sign", str(envelope), "--key", str(qa_key[0]), "--out", str(out))
    return out


# --- keygen ---------------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["ES256", "Ed25519"])
def test_keygen_writes_a_private_key_only_its_owner_can_read_and_the_public_half(
    tmp_path: Path, alg: str
):
    output = cli("suit", "keygen", "--alg", alg, "--out", str(tmp_path / "dev.pem"))
    priv, pub = tmp_path / "dev.pem", tmp_path / "dev.pub.pem"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    private = suit.load_private_key_pem(priv.read_bytes())
    public = suit.load_public_key_pem(pub.read_bytes())
    assert suit.key_algorithm(private) == suit.key_algorithm(public) == alg
    assert suit.kid_for_public_key(private) == suit.kid_for_public_key(public)
    assert suit.kid_for_public_key(public).hex() in output
    assert b"PRIVATE" not in pub.read_bytes()


def test_keygen_over_an_existing_world_readable_file_leaves_the_key_private(tmp_path: Path):
    """Regenerating a key into a file that already exists (0644) must not leave the new
    private key world-readable: O_CREAT's mode only applies to files it creates."""
    priv = tmp_path / "dev.pem"
    priv.write_text("old")
    priv.chmod(0o644)
    cli("suit", "keygen", "--alg", "Ed25519", "--out", str(priv))
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600


def test_keygen_refuses_an_unknown_algorithm(tmp_path: Path):
    with pytest.raises(CommandError, match="invalid choice"):
        cli("suit", "keygen", "--alg", "RSA", "--out", str(tmp_path / "k.pem"))
    assert list(tmp_path.iterdir()) == []


# --- create / inspect -----------------------------------------------------------------------
def test_create_then_inspect_shows_every_field_the_manifest_carries(
    envelope: Path, image: Path, author_key: tuple[Path, Path]
):
    data = inspect_json(envelope)
    vendor = suit.vendor_id(VENDOR_DOMAIN)
    raw = envelope.read_bytes()
    decoded = suit.decode_envelope(raw)
    assert data["vendor_id"] == str(vendor)
    assert data["class_id"] == str(suit.class_id(vendor, CLASS_NAME))
    assert data["sequence_number"] == 12
    assert data["version"] == "1.4.0+7"
    assert data["security_counter"] == 3
    assert data["payload_format"] == "mcuboot"
    assert data["image_digest"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert data["image_size"] == image.stat().st_size
    assert data["uri"] == URI
    assert data["expires"] == "2027-01-31T12:00:00+00:00"
    assert data["components"] == [["00"]]
    # The digest covers the manifest bstr including its CBOR head.
    assert (
        data["manifest_digest"] == hashlib.sha256(cbor2.dumps(decoded.manifest_bytes)).hexdigest()
    )
    assert data["signatures"] == [
        {"kind": "COSE_Sign1", "alg": -9, "alg_name": "ESP256", "kid": kid_of(author_key[1])}
    ]


def test_create_names_the_precursors_a_delta_may_apply_to(
    tmp_path: Path, image: Path, author_key: tuple[Path, Path]
):
    earlier = tmp_path / "app-1.3.0.bin"
    earlier.write_bytes(b"an earlier build" * 64)
    out = tmp_path / "delta-ok.suit"
    cli(*create_args(image, author_key[0], out), "--precursor", str(earlier))
    assert inspect_json(out)["precursor_digests"] == [
        hashlib.sha256(earlier.read_bytes()).hexdigest()
    ]
    assert (
        inspect_json(tmp_path / "delta-ok.suit")["image_digest"]
        == hashlib.sha256(image.read_bytes()).hexdigest()
    )
    # The standard profile names it too (a source component, no custom key).
    std = tmp_path / "std.suit"
    cli(
        *create_args(image, author_key[0], std, **{"--profile": "standard"}),
        "--precursor",
        str(earlier),
    )
    shown = inspect_json(std)
    assert shown["precursor_digests"] == [hashlib.sha256(earlier.read_bytes()).hexdigest()]
    assert shown["profile"] == "standard"


def test_create_reports_the_manifest_digest_it_wrote(
    tmp_path: Path, image: Path, author_key: tuple[Path, Path]
):
    out = tmp_path / "x.suit"
    output = cli(*create_args(image, author_key[0], out, **{"--sequence": "13"}))
    assert inspect_json(out)["manifest_digest"] in output


def test_create_without_expiry_leaves_expires_empty_and_naive_times_are_utc(
    tmp_path: Path, image: Path, author_key: tuple[Path, Path]
):
    args = create_args(image, author_key[0], tmp_path / "a.suit")
    del args[args.index("--expires") : args.index("--expires") + 2]
    cli(*args)
    assert inspect_json(tmp_path / "a.suit")["expires"] is None
    cli(
        *create_args(image, author_key[0], tmp_path / "b.suit", **{"--expires": "2027-02-01T08:30"})
    )
    assert inspect_json(tmp_path / "b.suit")["expires"] == "2027-02-01T08:30:00+00:00"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"--version": "1.4.1+7"}, "differs from the MCUboot header's 1.4.0+7"),
        ({"--security-counter": "4"}, "differs from the image's security-counter TLV 3"),
        ({"--version": "banana"}, "banana"),
        ({"--sequence": "-1"}, "must be >= 0"),
        ({"--expires": "next tuesday"}, "is not an ISO 8601 date-time"),
        ({"--component": "zz"}, "is not hex"),
    ],
    ids=[
        "version-mismatch",
        "counter-mismatch",
        "bad-version",
        "negative-seq",
        "bad-expiry",
        "bad-component",
    ],
)
def test_create_refuses_inconsistent_input_and_writes_no_file(
    tmp_path: Path,
    image: Path,
    author_key: tuple[Path, Path],
    override: dict[str, str],
    message: str,
):
    out = tmp_path / "refused.suit"
    assert message in refused(*create_args(image, author_key[0], out, **override))
    assert not out.exists()


def test_create_refuses_a_tampered_mcuboot_image(
    tmp_path: Path, image: Path, author_key: tuple[Path, Path]
):
    tampered = bytearray(image.read_bytes())
    tampered[DEFAULT_HEADER_SIZE + 10] ^= 0xFF
    bad = tmp_path / "tampered.bin"
    bad.write_bytes(bytes(tampered))
    out = tmp_path / "refused.suit"
    assert "[image." in refused(*create_args(bad, author_key[0], out))
    assert not out.exists()


def test_create_for_a_raw_image_skips_the_header_checks(
    tmp_path: Path, author_key: tuple[Path, Path]
):
    raw = tmp_path / "blob.bin"
    raw.write_bytes(b"\x01\x02" * 300)
    out = tmp_path / "raw.suit"
    cli(*create_args(raw, author_key[0], out, **{"--version": "9.9.9", "--security-counter": "0"}))
    data = inspect_json(out)
    assert (data["payload_format"], data["version"], data["image_size"]) == ("raw", "9.9.9", 600)


def test_inspect_reads_hex_text_the_same_as_binary(tmp_path: Path, envelope: Path):
    text = envelope.read_bytes().hex()
    wrapped = tmp_path / "envelope.hex"
    wrapped.write_text("\n".join(text[i : i + 60] for i in range(0, len(text), 60)) + "\n")
    assert inspect_json(wrapped) == inspect_json(envelope)


def test_inspect_text_output_lists_fields_and_signatures(
    envelope: Path, author_key: tuple[Path, Path]
):
    output = cli("suit", "inspect", str(envelope))
    assert "sequence_number    12" in output
    assert f"signature          COSE_Sign1 alg -9 (ESP256) kid {kid_of(author_key[1])}" in output


# --- sign -----------------------------------------------------------------------------------
def test_sign_adds_a_second_signature_and_leaves_the_manifest_bytes_alone(
    envelope: Path, cosigned: Path, author_key: tuple[Path, Path], qa_key: tuple[Path, Path]
):
    before = suit.decode_envelope(envelope.read_bytes())
    after = suit.decode_envelope(cosigned.read_bytes())
    assert after.manifest_bytes == before.manifest_bytes
    assert after.manifest_digest == before.manifest_digest
    data = inspect_json(cosigned)
    assert [(s["alg"], s["kid"]) for s in data["signatures"]] == [
        (-9, kid_of(author_key[1])),
        (-19, kid_of(qa_key[1])),
    ]
    assert {k: v for k, v in data.items() if k != "signatures"} == {
        k: v for k, v in inspect_json(envelope).items() if k != "signatures"
    }


def test_sign_refuses_a_missing_input_file(tmp_path: Path, qa_key: tuple[Path, Path]):
    out = tmp_path / "o.suit"
    assert "cannot read" in refused(
        "suit", "sign", str(tmp_path / "nope.suit"), "--key", str(qa_key[0]), "--out", str(out)
    )
    assert not out.exists()


def test_sign_refuses_a_public_key_given_as_the_private_key(
    tmp_path: Path, envelope: Path, qa_key: tuple[Path, Path]
):
    out = tmp_path / "o.suit"
    with pytest.raises(CommandError):
        cli("suit", "sign", str(envelope), "--key", str(qa_key[1]), "--out", str(out))
    assert not out.exists()


def test_sign_of_a_garbage_file_fails_with_a_message_not_a_traceback(
    tmp_path: Path, qa_key: tuple[Path, Path]
):
    garbage = tmp_path / "garbage.suit"
    garbage.write_bytes(b"this is not an envelope\n")
    out = tmp_path / "o.suit"
    assert "[suit." in refused(
        "suit", "sign", str(garbage), "--key", str(qa_key[0]), "--out", str(out)
    )
    assert not out.exists()


# --- verify ---------------------------------------------------------------------------------
def test_verify_two_of_two_after_sign(
    cosigned: Path, author_key: tuple[Path, Path], qa_key: tuple[Path, Path]
):
    output = cli(
        "suit", "verify", str(cosigned), "--key", str(author_key[1]), "--key", str(qa_key[1]),
        "--threshold", "2",
    )  # fmt: skip
    assert output.startswith("OK: 2 distinct key(s)")


def test_verify_threshold_not_met_is_refused(cosigned: Path, author_key: tuple[Path, Path]):
    message = refused(
        "suit", "verify", str(cosigned), "--key", str(author_key[1]), "--threshold", "2"
    )
    assert "verification failed: 1 of 2 required distinct keys signed" in message


def test_same_key_given_twice_counts_once(
    tmp_path: Path, cosigned: Path, author_key: tuple[Path, Path]
):
    copy = tmp_path / "copy-of-author.pub.pem"
    copy.write_bytes(author_key[1].read_bytes())
    for second in (author_key[1], copy):
        message = refused(
            "suit", "verify", str(cosigned), "--key", str(author_key[1]), "--key", str(second),
            "--threshold", "2",
        )  # fmt: skip
        assert "1 of 2 required" in message


def test_envelope_signed_twice_by_the_same_key_counts_once(
    tmp_path: Path, envelope: Path, author_key: tuple[Path, Path], qa_key: tuple[Path, Path]
):
    twice = tmp_path / "twice.suit"
    cli("suit", "sign", str(envelope), "--key", str(author_key[0]), "--out", str(twice))
    assert len(inspect_json(twice)["signatures"]) == 2
    message = refused(
        "suit", "verify", str(twice), "--key", str(author_key[1]), "--key", str(qa_key[1]),
        "--threshold", "2",
    )  # fmt: skip
    assert "1 of 2 required" in message


def test_verify_with_the_wrong_key_is_refused(envelope: Path, qa_key: tuple[Path, Path]):
    message = refused("suit", "verify", str(envelope), "--key", str(qa_key[1]))
    assert "0 of 1 required" in message and "is not among the keys" in message


def test_tampered_envelope_fails_verification(
    tmp_path: Path, envelope: Path, author_key: tuple[Path, Path]
):
    raw = envelope.read_bytes()
    at = raw.index(URI.encode()) + len("coap://")
    tampered = tmp_path / "tampered.suit"
    tampered.write_bytes(raw[:at] + b"F" + raw[at + 1 :])  # coap://fw. -> coap://Fw.
    message = refused("suit", "verify", str(tampered), "--key", str(author_key[1]))
    assert "verification failed" in message or "[suit." in message


def test_tampered_signature_fails_verification(
    tmp_path: Path, envelope: Path, author_key: tuple[Path, Path]
):
    raw = bytearray(envelope.read_bytes())
    block = suit.decode_envelope(bytes(raw)).signatures[0].raw
    at = bytes(raw).index(block) + len(block) - 3
    raw[at] ^= 0x01
    tampered = tmp_path / "bad-sig.suit"
    tampered.write_bytes(bytes(raw))
    message = refused("suit", "verify", str(tampered), "--key", str(author_key[1]))
    assert "does not verify" in message


@pytest.mark.parametrize(
    "content",
    [b"", b"not an envelope at all\n", b"\xd8\x6b\xa0", b"d86b"],
    ids=["empty", "text", "empty-map", "truncated-hex"],
)
def test_verify_of_garbage_fails_with_a_coded_message(
    tmp_path: Path, author_key: tuple[Path, Path], content: bytes
):
    garbage = tmp_path / "garbage.suit"
    garbage.write_bytes(content)
    assert "[suit." in refused("suit", "verify", str(garbage), "--key", str(author_key[1]))


def test_verify_refuses_a_garbage_key_file_and_a_zero_threshold(
    tmp_path: Path, envelope: Path, author_key: tuple[Path, Path]
):
    bad_key = tmp_path / "bad.pub.pem"
    bad_key.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    assert str(bad_key) in refused("suit", "verify", str(envelope), "--key", str(bad_key))
    message = refused(
        "suit", "verify", str(envelope), "--key", str(author_key[1]), "--threshold", "0"
    )
    assert "--threshold must be >= 1" in message


# --- the public IETF vectors ----------------------------------------------------------------
VECTOR_FACTS = {
    "example0_secure_boot": (
        0,
        "6658ea560262696dd1f13b782239a064da7c6c5cbaf52fded428a6fc83c7e5af",
    ),
    "example1_download_install": (
        1,
        "1f2e7acca0dc2786f2fe4eb947f50873a6a3cfaa98866c5b02e621f42074daf2",
    ),
    "example2_download_install_secureboot_severed": (
        2,
        "6a5197ed8f9dccf733d1c89a359441708e070b4c6dcb9a1c2c82c6165f609b90",
    ),
}
VECTOR_URIS = {
    "example1_download_install": "http://example.com/file.bin",
    # The install sequence carrying it is only present in the .2_ (severable members) file.
    "example2_download_install_secureboot_severed.2_envelope_with_cose_auth_and_severable.hex": (
        "http://example.com/very/long/path/to/file/file.bin"
    ),
}
VECTORS = sorted(p.name for p in SHARED_VECTORS.glob("*.hex"))
VECTOR_KEY = SHARED_VECTORS / "suit_examples_public_key.pem"


def test_all_seven_vectors_are_present():
    assert len(VECTORS) == 7


@pytest.mark.parametrize("name", VECTORS)
def test_inspect_json_of_a_public_vector_shows_the_published_facts(name: str):
    prefix = name.split(".")[0]
    sequence, manifest_digest = VECTOR_FACTS[prefix]
    data = inspect_json(SHARED_VECTORS / name)
    assert data["vendor_id"] == str(suit.vendor_id("arm.com"))
    assert data["vendor_id"] == "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"
    assert data["class_id"] == "1492af14-2569-5e48-bf42-9b2d51f2ab45"
    assert data["sequence_number"] == sequence
    assert data["image_size"] == 34768
    assert data["image_digest"] == (
        "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210"
    )
    assert data["manifest_digest"] == manifest_digest
    assert data["uri"] == VECTOR_URIS.get(name, VECTOR_URIS.get(prefix))
    assert data["version"] is None and data["security_counter"] is None
    assert data["expires"] is None
    expected_sigs = (
        []
        if ".0_" in name
        else [{"kind": "COSE_Sign1", "alg": -7, "alg_name": "ES256", "kid": None}]
    )
    assert data["signatures"] == expected_sigs


@pytest.mark.parametrize("name", [n for n in VECTORS if ".0_" not in n])
def test_public_vector_verifies_with_the_published_key(name: str):
    output = cli("suit", "verify", str(SHARED_VECTORS / name), "--key", str(VECTOR_KEY))
    assert output.startswith("OK: 1 distinct key(s)")


def test_unsigned_public_vector_fails_verification():
    name = next(n for n in VECTORS if ".0_" in n)
    message = refused("suit", "verify", str(SHARED_VECTORS / name), "--key", str(VECTOR_KEY))
    assert "carries no signature" in message


# --- image-info -----------------------------------------------------------------------------
def test_image_info_json_shows_the_mcuboot_fields(image: Path):
    data = json.loads(cli("suit", "image-info", str(image), "--json"))
    assert data["kind"] == "mcuboot"
    assert data["version"] == "1.4.0+7"
    assert data["security_counter"] == 3
    assert data["hash_ok"] is True
    assert data["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert data["hash_tlv"] == data["computed_hash"]


def test_image_info_of_a_tampered_image_reports_hash_not_ok_and_exits_1(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
):
    tampered = bytearray(image.read_bytes())
    tampered[DEFAULT_HEADER_SIZE + 10] ^= 0xFF
    bad = tmp_path / "tampered.bin"
    bad.write_bytes(bytes(tampered))
    out = io.StringIO()
    with pytest.raises(SystemExit) as caught:
        call_command("suit", "image-info", str(bad), "--json", stdout=out)
    assert caught.value.code == 1
    data = json.loads(out.getvalue())
    assert data["hash_ok"] is False and data["hash_tlv"] != data["computed_hash"]
    assert "does not match" in capsys.readouterr().err


def test_image_info_of_a_raw_binary_has_no_hash_to_check(tmp_path: Path):
    raw = tmp_path / "blob.bin"
    raw.write_bytes(b"\0" * 64)
    data = json.loads(cli("suit", "image-info", str(raw), "--json"))
    assert data == {"kind": "raw", "size": 64, "sha256": hashlib.sha256(b"\0" * 64).hexdigest()}


def test_image_info_of_a_truncated_mcuboot_image_is_refused(tmp_path: Path, image: Path):
    cut = tmp_path / "cut.bin"
    cut.write_bytes(image.read_bytes()[:40])
    assert "[image." in refused("suit", "image-info", str(cut))


# --- exit status as a shell sees it (real processes; ~1 s each, keep few) --------------------
def test_subprocess_verify_exit_status_and_stderr(
    cosigned: Path, author_key: tuple[Path, Path], qa_key: tuple[Path, Path]
):
    ok = run(
        "suit", "verify", cosigned, "--key", author_key[1], "--key", qa_key[1], "--threshold", "2"
    )
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith("OK: 2 distinct key(s)")
    short = run(
        "suit",
        "verify",
        cosigned,
        "--key",
        author_key[1],
        "--key",
        author_key[1],
        "--threshold",
        "2",
    )
    assert short.returncode == 1 and short.stdout == ""
    assert "verification failed: 1 of 2 required distinct keys signed" in short.stderr
    assert "Traceback" not in short.stderr


@pytest.mark.parametrize("action", ["inspect", "verify", "sign"])
def test_subprocess_garbage_file_exits_1_with_a_message_never_a_traceback(
    tmp_path: Path, qa_key: tuple[Path, Path], action: str
):
    garbage = tmp_path / "garbage.suit"
    garbage.write_bytes(os.urandom(64).replace(b"\xd8\x6b", b"\x00\x00"))
    extra = {
        "inspect": [],
        "verify": ["--key", qa_key[1]],
        "sign": ["--key", qa_key[0], "--out", tmp_path / "o.suit"],
    }[action]
    proc = run("suit", action, garbage, *extra)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "CommandError:" in proc.stderr and "[suit." in proc.stderr


def test_subprocess_image_info_of_a_tampered_image_exits_1(tmp_path: Path, image: Path):
    tampered = bytearray(image.read_bytes())
    tampered[DEFAULT_HEADER_SIZE + 10] ^= 0xFF
    bad = tmp_path / "tampered.bin"
    bad.write_bytes(bytes(tampered))
    proc = run("suit", "image-info", bad, "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["hash_ok"] is False
    assert "image hash TLV does not match the image" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- default payload URI per delivery profile -------------------------------------------------
def _created_uri(image: Path, key: Path, out: Path, *extra: str) -> str | None:
    args = create_args(image, key, out)
    at = args.index("--uri")
    del args[at : at + 2]
    cli(*args, *extra)
    return suit.decode_envelope(out.read_bytes()).manifest.uri


def test_create_without_uri_names_the_image_path_the_gateway_serves(
    tmp_path: Path, image: Path, author_key: tuple[Path, Path]
):
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert _created_uri(image, author_key[0], tmp_path / "a.suit") == f"/fw/i/{sha}"
    assert _created_uri(image, author_key[0], tmp_path / "b.suit", "--delivery", "suit") == (
        f"/fw/i/{sha}"
    )


def test_create_for_suit_integrated_defaults_to_a_fragment_and_refuses_other_uris(
    tmp_path: Path, image: Path, author_key: tuple[Path, Path]
):
    out = tmp_path / "i.suit"
    assert _created_uri(image, author_key[0], out, "--delivery", "suit-integrated") == "#app"
    message = refused(
        *create_args(image, author_key[0], tmp_path / "j.suit"), "--delivery", "suit-integrated"
    )
    assert "fragment-only" in message
    assert not (tmp_path / "j.suit").exists()


# --- conformance: what inspect / verify show and refuse ----------------------------------------
def test_create_with_the_standard_profile_writes_no_custom_key(
    tmp_path: Path, image: Path, author_key: tuple[Path, Path]
):
    out = tmp_path / "standard.suit"
    cli(*create_args(image, author_key[0], out), "--profile", "standard")
    data = inspect_json(out)
    assert (data["profile"], data["security_counter"], data["payload_format"]) == (
        "standard",
        None,
        None,
    )
    assert (data["version"], data["set_version"]) == ("1.4.0+7", [1, 4, 0])
    assert "OK: 1 distinct key(s)" in cli("suit", "verify", str(out), "--key", str(author_key[1]))


def test_inspect_shows_and_verify_checks_a_cose_mac0_block(tmp_path: Path, envelope: Path):
    secret = tmp_path / "mac.key"
    secret.write_bytes(bytes(range(32)))
    raw = envelope.read_bytes()
    block = suit.mac0(suit.decode_envelope(raw).digest_bstr, secret.read_bytes())
    mac_only = tmp_path / "mac.suit"
    top = cbor2.loads(raw)
    auth = cbor2.loads(top.value[2])
    mac_only.write_bytes(
        cbor2.dumps(
            cbor2.CBORTag(107, {2: cbor2.dumps([auth[0], block]), 3: top.value[3]}),
            canonical=True,
        )
    )
    sig = inspect_json(mac_only)["signatures"][0]
    assert (sig["kind"], sig["alg"], sig["alg_name"]) == ("COSE_Mac0", 5, "HMAC-256")
    assert "OK: 1 distinct key(s)" in cli("suit", "verify", str(mac_only), "--mac-key", str(secret))
    message = refused("suit", "verify", str(mac_only), "--key", str(envelope.parent / "x.pem"))
    assert "x.pem" in message  # an unreadable key file is named first
    pub = tmp_path / "k.pub.pem"
    pub.write_bytes(suit.public_key_pem(suit.generate_private_key("ES256")))
    message = refused("suit", "verify", str(mac_only), "--key", str(pub))
    assert "[suit.unsupported]" in message and "COSE_Mac0" in message


def test_inspect_and_verify_name_an_untagged_envelope(tmp_path: Path, envelope: Path):
    untagged = tmp_path / "untagged.suit"
    untagged.write_bytes(envelope.read_bytes()[2:])
    for action in ("inspect", "verify"):
        extra = ["--mac-key", str(envelope)] if action == "verify" else []
        message = refused("suit", action, str(untagged), *extra)
        assert "untagged SUIT_Envelope (tag 107 missing) [suit.tag]" in message


def test_create_with_encryption_info_puts_it_in_the_signed_install_sequence(
    workdir: Path, image: Path, author_key: tuple[Path, Path]
) -> None:
    sealed = suit.encrypt_payload(image.read_bytes(), [suit.KEKRecipient(b"k1", bytes(16))])
    info = workdir / "info.cbor"
    info.write_bytes(sealed.encryption_info)
    out = workdir / "enc.suit"
    cipher_uri = "/fw/i/" + hashlib.sha256(sealed.ciphertext).hexdigest()
    cli(
        *create_args(
            image, author_key[0], out, **{"--encryption-info": str(info)}, **{"--uri": cipher_uri}
        )
    )
    env = suit.decode_envelope(out.read_bytes())
    assert suit.encode_encryption_info(env.manifest.encryption_info[0]) == sealed.encryption_info
    assert env.manifest.uri == cipher_uri


def test_create_with_encryption_info_but_no_uri_is_refused(
    workdir: Path, image: Path, author_key: tuple[Path, Path]
) -> None:
    info = workdir / "info2.cbor"
    info.write_bytes(
        suit.encrypt_payload(b"x", [suit.KEKRecipient(b"k", bytes(16))]).encryption_info
    )
    args = create_args(
        image, author_key[0], workdir / "none.suit", **{"--encryption-info": str(info)}
    )
    at = args.index("--uri")
    del args[at : at + 2]
    with pytest.raises(CommandError, match="needs --uri"):
        call_command(*args)
    assert not (workdir / "none.suit").exists()
