"""The SUIT codec's error tree.

Every failure of the codec is a :class:`SUITError`; callers (API, CLI, Django services) catch that
one class and report ``code`` (stable, machine readable) and ``str(exc)`` (human readable,
always naming *where* in the envelope the problem is, e.g.
``envelope/manifest/common/shared-sequence[3]``).
"""

from __future__ import annotations


class SUITError(Exception):
    """Base of every error raised by the SUIT codec."""

    code = "suit.error"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# --- decoding: the input is not an acceptable SUIT envelope --------------------------------------


class SUITDecodeError(SUITError):
    """The input is not an acceptable SUIT envelope (base of all decoding errors)."""

    code = "suit.decode"


class SUITInputError(SUITDecodeError):
    """The input is neither CBOR of a tagged envelope nor hex text of one."""

    code = "suit.input"


class SUITSizeError(SUITDecodeError):
    """The input is larger than the configured maximum size."""

    code = "suit.size"


class SUITMalformedCBORError(SUITDecodeError):
    """The bytes are not well-formed CBOR (reserved values, bad UTF-8, stray break, ...)."""

    code = "suit.malformed_cbor"


class SUITTruncatedError(SUITMalformedCBORError):
    """The CBOR item ends before its declared length."""

    code = "suit.truncated"


class SUITTrailingBytesError(SUITDecodeError):
    """Bytes follow the single CBOR item that was expected (top level or inside a bstr)."""

    code = "suit.trailing_bytes"


class SUITIndefiniteLengthError(SUITDecodeError):
    """An indefinite-length string, array or map was used; SUIT requires definite lengths."""

    code = "suit.indefinite_length"


class SUITDuplicateKeyError(SUITDecodeError):
    """A CBOR map repeats a key."""

    code = "suit.duplicate_key"


class SUITNestingError(SUITDecodeError):
    """Containers are nested deeper than the configured limit (counted across bstr wrapping)."""

    code = "suit.nesting"


class SUITNonCanonicalError(SUITDecodeError):
    """A SUIT structure is not deterministically encoded (RFC 8949 4.2.1), as SUIT requires."""

    code = "suit.non_canonical"


class SUITTagError(SUITDecodeError):
    """A CBOR tag is missing where required or present where not allowed."""

    code = "suit.tag"


class SUITTypeError(SUITDecodeError):
    """A value has the wrong CBOR type (e.g. text where a byte string is required)."""

    code = "suit.type"


class SUITValueError(SUITDecodeError):
    """A value has the right type but an unacceptable value (size, range, format)."""

    code = "suit.value"


class SUITMissingKeyError(SUITDecodeError):
    """A required map member is absent."""

    code = "suit.missing_key"


class SUITUnknownKeyError(SUITDecodeError):
    """A map has a member this codec does not know; unknown members may be critical."""

    code = "suit.unknown_key"


class SUITMemberOrderError(SUITDecodeError):
    """The authentication wrapper is not the first member of the envelope."""

    code = "suit.member_order"


class SUITUnknownCommandError(SUITDecodeError):
    """A command sequence holds a condition or directive this codec does not know."""

    code = "suit.unknown_command"


class SUITUnknownParameterError(SUITUnknownCommandError):
    """A parameter map holds a parameter this codec does not know."""

    code = "suit.unknown_parameter"


class SUITCommandNotAllowedError(SUITDecodeError):
    """A known command appears where SUIT forbids it (e.g. a fetch in the shared sequence)."""

    code = "suit.command_not_allowed"


class SUITManifestVersionError(SUITDecodeError):
    """The manifest's structure version is not 1."""

    code = "suit.manifest_version"


class SUITDigestAlgorithmError(SUITDecodeError):
    """A SUIT_Digest uses an algorithm this codec does not support."""

    code = "suit.digest_algorithm"


class SUITDigestMismatchError(SUITDecodeError):
    """A digest does not match the bytes it covers (manifest or severed member)."""

    code = "suit.digest_mismatch"


class SUITSeverableError(SUITDecodeError):
    """A severable member is inconsistent between manifest and envelope."""

    code = "suit.severable"


class SUITCOSEError(SUITDecodeError):
    """A COSE_Sign1 authentication block is structurally unacceptable."""

    code = "suit.cose"


class SUITAlgorithmError(SUITCOSEError):
    """A COSE block names a signature algorithm this codec does not support."""

    code = "suit.algorithm"


class SUITInternalError(SUITDecodeError):
    """An unexpected failure inside the codec on this input (a bug, reported as a decode error)."""

    code = "suit.internal"


# --- valid SUIT the product cannot act on -------------------------------------------------------


class SUITUnsupportedError(SUITError):
    """Valid SUIT the product cannot enforce here (MAC with no key, encrypted payload)."""

    code = "suit.unsupported"


# --- keys, signatures and building ----------------------------------------------------------------


class SUITKeyError(SUITError):
    """A key is unreadable or of an unsupported type (only P-256 and Ed25519 are supported)."""

    code = "suit.key"


class SUITSignatureError(SUITError):
    """A signature operation cannot be performed as asked."""

    code = "suit.signature"


class SUITKeyMismatchError(SUITSignatureError):
    """The key's type does not match the block's algorithm (e.g. an Ed25519 key for ES256)."""

    code = "suit.alg_key_mismatch"


class SUITParamsError(SUITError, ValueError):
    """The parameters given to build a manifest are invalid."""

    code = "suit.invalid_params"


ALL_ERRORS: tuple[type[SUITError], ...] = (
    SUITError,
    SUITDecodeError,
    SUITInputError,
    SUITSizeError,
    SUITMalformedCBORError,
    SUITTruncatedError,
    SUITTrailingBytesError,
    SUITIndefiniteLengthError,
    SUITDuplicateKeyError,
    SUITNestingError,
    SUITNonCanonicalError,
    SUITTagError,
    SUITTypeError,
    SUITValueError,
    SUITMissingKeyError,
    SUITUnknownKeyError,
    SUITMemberOrderError,
    SUITUnknownCommandError,
    SUITUnknownParameterError,
    SUITCommandNotAllowedError,
    SUITManifestVersionError,
    SUITDigestAlgorithmError,
    SUITDigestMismatchError,
    SUITSeverableError,
    SUITCOSEError,
    SUITAlgorithmError,
    SUITInternalError,
    SUITUnsupportedError,
    SUITKeyError,
    SUITSignatureError,
    SUITKeyMismatchError,
    SUITParamsError,
)
