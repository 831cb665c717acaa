"""Signed SUIT reports (draft-ietf-suit-report-22): what a SUIT device says happened to one update.

A report is a COSE_Sign1 (tag 18, payload attached) over a ``SUIT_Report`` map, signed by the
device's own report key (Ed25519 or P-256; registered with the device on the server). It names
the manifest it reports on by its SUIT digest (``suit-reference``), carries the nonce the server
gave this attempt (``suit-report-nonce``; required in this product's profile, optional in the
draft) and the result: ``true``, or the failing command, the record of where it failed and the
draft's reason code.

Invariants :func:`verify_report` enforces, in this order, each with its own error:

* the bytes are one tagged COSE_Sign1 whose payload is a well-formed report (else
  :class:`ReportMalformedError`);
* the signature verifies under the device's registered key, with the algorithm that key is for
  (else :class:`ReportForgedError`);
* the report names the manifest the server sent (else :class:`ReportWrongManifestError`);
* its nonce is the one the server gave this attempt (else :class:`ReportReplayedError`): a
  report captured from an earlier attempt cannot stand for a later one.

Pure: no Django, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cbor2 import CBORDecodeError, CBORTag, loads
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .cbor import dumps
from .constants import (
    ALG_ED25519,
    ALG_EDDSA,
    ALG_ES256,
    ALG_ESP256,
    ALG_SHA256,
    COND_CHECK_CONTENT,
    COND_CLASS_ID,
    COND_COMPONENT_SLOT,
    COND_IMAGE_MATCH,
    COND_SECURITY_COUNTER,
    COND_USE_BEFORE,
    COND_VENDOR_ID,
    DIR_FETCH,
    DIR_INVOKE,
    DIR_WRITE,
    ENV_AUTH,
    HDR_ALG,
    HDR_KID,
    M_INSTALL,
    M_INVOKE,
    M_SEQUENCE,
    M_VALIDATE,
    P_PRECURSOR_DIGESTS,
    TAG_COSE_SIGN1,
)
from .cose import sig_structure
from .errors import SUITError
from .keys import key_info

# SUIT_Report map keys and SUIT_Record positions (draft-ietf-suit-report-22, CDDL).
REPORT_NONCE: Final = 2
REPORT_RECORDS: Final = 3
REPORT_RESULT: Final = 4
RESULT_CODE: Final = 5
RESULT_RECORD: Final = 6
RESULT_REASON: Final = 7
REPORT_REFERENCE: Final = 99

# SUIT_Report_Reasons.
REASON_OK: Final = 0
REASON_CBOR_PARSE: Final = 1
REASON_COSE_UNSUPPORTED: Final = 2
REASON_ALG_UNSUPPORTED: Final = 3
REASON_UNAUTHORISED: Final = 4
REASON_COMMAND_UNSUPPORTED: Final = 5
REASON_COMPONENT_UNSUPPORTED: Final = 6
REASON_COMPONENT_UNAUTHORISED: Final = 7
REASON_PARAMETER_UNSUPPORTED: Final = 8
REASON_SEVERING_UNSUPPORTED: Final = 9
REASON_CONDITION_FAILED: Final = 10
REASON_OPERATION_FAILED: Final = 11
REASON_INVOKE_PENDING: Final = 12
REASON_NAMES: Final[dict[int, str]] = {
    REASON_OK: "ok",
    REASON_CBOR_PARSE: "cbor-parse",
    REASON_COSE_UNSUPPORTED: "cose-unsupported",
    REASON_ALG_UNSUPPORTED: "alg-unsupported",
    REASON_UNAUTHORISED: "unauthorised",
    REASON_COMMAND_UNSUPPORTED: "command-unsupported",
    REASON_COMPONENT_UNSUPPORTED: "component-unsupported",
    REASON_COMPONENT_UNAUTHORISED: "component-unauthorised",
    REASON_PARAMETER_UNSUPPORTED: "parameter-unsupported",
    REASON_SEVERING_UNSUPPORTED: "severing-unsupported",
    REASON_CONDITION_FAILED: "condition-failed",
    REASON_OPERATION_FAILED: "operation-failed",
    REASON_INVOKE_PENDING: "invoke-pending",
}

# The shortest nonce accepted: the server gives 16 random bytes per attempt.
MIN_NONCE_BYTES: Final = 16
MAX_NONCE_BYTES: Final = 64
# A report is small (one record); anything larger is refused before decoding.
MAX_REPORT_BYTES: Final = 2048

# Where a device's refusal happened, by the device check's stable code
# (``manifests.device_rules``): (manifest section, failing command, reason). Authentication has
# no command: the section is the envelope's authentication wrapper and the command 0.
FAILURE_BY_DEVICE_CODE: Final[dict[str, tuple[int, int, int]]] = {
    "device.untrusted_manifest": (ENV_AUTH, 0, REASON_UNAUTHORISED),
    "device.unsupported_manifest": (M_VALIDATE, 0, REASON_COMMAND_UNSUPPORTED),
    "device.manifest_incomplete": (M_VALIDATE, 0, REASON_PARAMETER_UNSUPPORTED),
    "device.vendor_mismatch": (M_VALIDATE, COND_VENDOR_ID, REASON_CONDITION_FAILED),
    "device.class_mismatch": (M_VALIDATE, COND_CLASS_ID, REASON_CONDITION_FAILED),
    "device.component_mismatch": (M_VALIDATE, COND_COMPONENT_SLOT, REASON_COMPONENT_UNSUPPORTED),
    "device.rollback": (M_SEQUENCE, 0, REASON_CONDITION_FAILED),
    "device.security_counter": (M_VALIDATE, COND_SECURITY_COUNTER, REASON_CONDITION_FAILED),
    "device.manifest_expired": (M_VALIDATE, COND_USE_BEFORE, REASON_CONDITION_FAILED),
    "device.no_space": (M_INSTALL, DIR_WRITE, REASON_OPERATION_FAILED),
    "device.image_size_mismatch": (M_INSTALL, COND_CHECK_CONTENT, REASON_CONDITION_FAILED),
    "device.image_digest_mismatch": (M_INSTALL, COND_IMAGE_MATCH, REASON_CONDITION_FAILED),
    "device.download_failed": (M_INSTALL, DIR_FETCH, REASON_OPERATION_FAILED),
    "device.boot_failed": (M_INVOKE, DIR_INVOKE, REASON_OPERATION_FAILED),
    # A delta refused because the running image is not among the signed precursors: the
    # precursor's image-match condition, told from the result's by the record's properties,
    # which carry the precursor parameter (-259) with the running image's digest.
    "device.wrong_precursor": (M_INSTALL, COND_IMAGE_MATCH, REASON_CONDITION_FAILED),
}
WRONG_PRECURSOR: Final = "device.wrong_precursor"
# Any other device failure.
GENERIC_FAILURE: Final = (M_INSTALL, 0, REASON_OPERATION_FAILED)

_SIGN_ALGS: Final = {"Ed25519": ALG_ED25519, "ES256": ALG_ESP256}
_ACCEPTED_ALGS: Final = {"Ed25519": {ALG_ED25519, ALG_EDDSA}, "ES256": {ALG_ESP256, ALG_ES256}}


class SUITReportError(SUITError):
    """A SUIT report the server cannot take as the device's word on this attempt."""

    code = "suit.report_invalid"


class ReportMalformedError(SUITReportError):
    """The bytes are not a COSE_Sign1 over a well-formed SUIT report of this profile."""

    code = "suit.report_malformed"


class ReportForgedError(SUITReportError):
    """The report's signature does not verify under the device's registered report key."""

    code = "suit.report_forged"


class ReportWrongManifestError(SUITReportError):
    """The report names another manifest than the one sent in this attempt."""

    code = "suit.report_wrong_manifest"


class ReportReplayedError(SUITReportError):
    """The report carries another attempt's nonce (a replayed or stale report)."""

    code = "suit.report_replayed"


@dataclass(frozen=True)
class ReportFailure:
    """Where processing stopped: the manifest section, the failing command (0 when the failure
    is outside any command, e.g. authentication) and the draft's reason code."""

    section: int
    command: int
    reason: int
    # A wrong-precursor refusal: the SHA-256 of the image the device runs (b"" when it did
    # not say), carried in the record's properties as the precursor parameter (-259).
    precursor: bytes | None = None

    @property
    def reason_name(self) -> str:
        return REASON_NAMES.get(self.reason, f"reason {self.reason}")

    @property
    def wrong_precursor(self) -> bool:
        """The device refused a delta whose base is not its running image."""
        return self.precursor is not None


@dataclass(frozen=True)
class SUITReport:
    """One report's content: the SHA-256 SUIT digest of the manifest, the attempt's nonce and
    the result (``failure`` None: success)."""

    manifest_digest: bytes
    nonce: bytes
    failure: ReportFailure | None = None

    @property
    def success(self) -> bool:
        return self.failure is None

    def describe(self) -> str:
        """One line for the rollout's detail and the audit log."""
        if self.failure is None:
            return "device report: success"
        f = self.failure
        what = "wrong precursor, " if f.wrong_precursor else ""
        return (
            f"device report: failure ({what}{f.reason_name}) at command {f.command} "
            f"in section {f.section}"
        )


def failure_for(device_code: str, *, running_digest: bytes = b"") -> ReportFailure:
    """The report failure a device records for one of its check codes (``running_digest``:
    the SHA-256 of its running image, for a wrong-precursor refusal)."""
    section, command, reason = FAILURE_BY_DEVICE_CODE.get(device_code, GENERIC_FAILURE)
    precursor = running_digest if device_code == WRONG_PRECURSOR else None
    return ReportFailure(section=section, command=command, reason=reason, precursor=precursor)


def encode_report(report: SUITReport) -> bytes:
    """The ``SUIT_Report`` map (deterministic CBOR)."""
    _check_nonce(report.nonce)
    if len(report.manifest_digest) != 32:
        raise ReportMalformedError("a manifest digest is 32 bytes (SHA-256)")
    result: Any = True
    if report.failure is not None:
        f = report.failure
        properties: dict[int, Any] = {}
        if f.precursor is not None:
            digests = [[ALG_SHA256, f.precursor]] if f.precursor else []
            properties[P_PRECURSOR_DIGESTS] = dumps(digests)
        record = [[], f.section, 0, 0, properties]
        result = {RESULT_CODE: f.command, RESULT_RECORD: record, RESULT_REASON: f.reason}
    return dumps(
        {
            REPORT_NONCE: report.nonce,
            REPORT_RECORDS: [],
            REPORT_RESULT: result,
            REPORT_REFERENCE: [[ALG_SHA256, report.manifest_digest]],
        }
    )


def sign_report(
    report: SUITReport, key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
) -> bytes:
    """The tagged COSE_Sign1 of ``report`` by the device's private report key (kid: the key's
    thumbprint, as manifests' signatures carry it)."""
    info = key_info(key)
    protected = dumps({HDR_ALG: _SIGN_ALGS[info.family], HDR_KID: info.kid})
    payload = encode_report(report)
    tbs = sig_structure(protected, payload)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(tbs)
    return dumps(CBORTag(TAG_COSE_SIGN1, [protected, {}, payload, signature]))


def _check_nonce(nonce: Any) -> bytes:
    if not isinstance(nonce, bytes) or not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise ReportMalformedError(
            f"the report nonce is {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES} bytes in this profile"
        )
    return nonce


def _loads(data: bytes, where: str) -> Any:
    try:
        return loads(data)
    except (CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ReportMalformedError(f"{where} is not CBOR: {exc}") from None


def _uint(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportMalformedError(f"{where} must be an integer")
    return value


def _parse_report(payload: bytes) -> SUITReport:
    body = _loads(payload, "the report")
    if not isinstance(body, Mapping):
        raise ReportMalformedError("a SUIT_Report is a map")
    reference = body.get(REPORT_REFERENCE)
    if not isinstance(reference, list | tuple) or not 1 <= len(reference) <= 2:
        raise ReportMalformedError("suit-reference is [? uri, digest]")
    digest = reference[-1]
    if len(reference) == 2 and not isinstance(reference[0], str):
        raise ReportMalformedError("suit-report-manifest-uri must be text")
    if (
        not isinstance(digest, list | tuple)
        or len(digest) != 2
        or digest[0] != ALG_SHA256
        or not isinstance(digest[1], bytes)
        or len(digest[1]) != 32
    ):
        raise ReportMalformedError("suit-report-manifest-digest must be a SHA-256 SUIT_Digest")
    if REPORT_NONCE not in body:
        raise ReportMalformedError("the report has no nonce (required in this profile)")
    nonce = _check_nonce(body[REPORT_NONCE])
    if not isinstance(body.get(REPORT_RECORDS), list | tuple):
        raise ReportMalformedError("suit-report-records must be a list")
    result = body.get(REPORT_RESULT)
    failure: ReportFailure | None = None
    if result is True:
        pass
    elif isinstance(result, Mapping):
        record = result.get(RESULT_RECORD)
        if not isinstance(record, list | tuple) or len(record) < 5:
            raise ReportMalformedError("suit-report-result-record must be a SUIT_Record")
        if not isinstance(record[4], Mapping):
            raise ReportMalformedError("suit-record-properties must be a map")
        failure = ReportFailure(
            section=_uint(record[1], "suit-record-manifest-section"),
            command=_uint(result.get(RESULT_CODE), "suit-report-result-code"),
            reason=_uint(result.get(RESULT_REASON), "suit-report-result-reason"),
            precursor=_precursor(record[4]),
        )
        if failure.reason == REASON_OK:
            raise ReportMalformedError("a failure result with reason ok")
    else:
        raise ReportMalformedError("suit-report-result is true or a failure map")
    return SUITReport(manifest_digest=digest[1], nonce=nonce, failure=failure)


def _precursor(properties: Mapping[Any, Any]) -> bytes | None:
    """The running image's SHA-256 a wrong-precursor record carries (b"" when it names none),
    or None when the record is about something else."""
    if P_PRECURSOR_DIGESTS not in properties:
        return None
    value = properties[P_PRECURSOR_DIGESTS]
    digests = _loads(value, "the precursor property") if isinstance(value, bytes) else None
    if not isinstance(digests, list) or len(digests) > 1:
        raise ReportMalformedError("the precursor property is bstr .cbor [? SUIT_Digest]")
    if not digests:
        return b""
    digest = digests[0]
    if (
        not isinstance(digest, list)
        or len(digest) != 2
        or digest[0] != ALG_SHA256
        or not isinstance(digest[1], bytes)
        or len(digest[1]) != 32
    ):
        raise ReportMalformedError("the precursor property names a SHA-256 SUIT_Digest")
    return bytes(digest[1])


def _verify_signature(protected: bytes, payload: bytes, signature: bytes, public_key: Any) -> None:
    info = key_info(public_key)
    header = _loads(protected, "the protected header") if protected else {}
    if not isinstance(header, Mapping):
        raise ReportMalformedError("the protected header is a map")
    alg = header.get(HDR_ALG)
    if alg not in _ACCEPTED_ALGS[info.family]:
        raise ReportForgedError(f"alg {alg!r} is not one the device's {info.family} key signs")
    tbs = sig_structure(protected, payload)
    try:
        if info.family == "ES256":
            if len(signature) != 64:
                raise ReportForgedError("a P-256 signature is 64 bytes")
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            info.public.verify(der, tbs, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
        else:
            info.public.verify(signature, tbs)  # type: ignore[call-arg]
    except InvalidSignature:
        raise ReportForgedError("the signature does not verify under the device's key") from None


def open_report(data: bytes, *, public_key: Any) -> SUITReport:
    """The report in ``data`` once its signature verified under ``public_key`` (the device's
    registered report key)."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportMalformedError(f"a report is at most {MAX_REPORT_BYTES} bytes")
    outer = _loads(data, "the signed report")
    if not isinstance(outer, CBORTag) or outer.tag != TAG_COSE_SIGN1:
        raise ReportMalformedError("a signed report is a tagged COSE_Sign1 (tag 18)")
    value = outer.value
    if (
        not isinstance(value, list | tuple)
        or len(value) != 4
        or not isinstance(value[0], bytes)
        or not isinstance(value[1], Mapping)
        or not isinstance(value[2], bytes)
        or not isinstance(value[3], bytes)
    ):
        raise ReportMalformedError("COSE_Sign1 is [protected bstr, {}, payload bstr, signature]")
    protected, _unprotected, payload, signature = value
    _verify_signature(protected, payload, signature, public_key)
    return _parse_report(payload)


def verify_report(
    data: bytes, *, public_key: Any, manifest_digest: bytes, nonce: bytes
) -> SUITReport:
    """The report, when it is the device's (signature), about ``manifest_digest`` and for this
    attempt (``nonce``); the specific :class:`SUITReportError` otherwise."""
    report = open_report(data, public_key=public_key)
    if not hmac.compare_digest(report.manifest_digest, manifest_digest):
        raise ReportWrongManifestError(
            f"the report is about manifest {report.manifest_digest.hex()}, "
            f"not {manifest_digest.hex()}"
        )
    if not hmac.compare_digest(report.nonce, nonce):
        raise ReportReplayedError("the report's nonce is not this attempt's")
    return report


def report_digest(data: bytes) -> str:
    """SHA-256 of the exact report bytes (hex), as the audit log records it."""
    return hashlib.sha256(data).hexdigest()
