"""Numbers of the SUIT manifest format.

Sources: draft-ietf-suit-manifest-37 (CDDL appendix), draft-ietf-suit-update-management-14,
draft-ietf-suit-firmware-encryption-24, draft-ietf-suit-trust-domains-11, RFC 9052/9053 (COSE),
RFC 9864 (fully specified algorithms -9 and -19). Custom (negative) keys are this product's own
choice; see docs/suit.md.
"""

from __future__ import annotations

from typing import Final

# --- CBOR tags ------------------------------------------------------------------------------------
TAG_ENVELOPE: Final = 107
TAG_COSE_SIGN1: Final = 18
TAG_COSE_MAC0: Final = 17
TAG_COSE_ENCRYPT: Final = 96
TAG_COSE_ENCRYPT0: Final = 16

# --- SUIT_Envelope members ------------------------------------------------------------------------
ENV_AUTH: Final = 2
ENV_MANIFEST: Final = 3

# --- SUIT_Manifest members ------------------------------------------------------------------------
M_VERSION: Final = 1
M_SEQUENCE: Final = 2
M_COMMON: Final = 3
M_REFERENCE_URI: Final = 4
M_MANIFEST_COMPONENT_ID: Final = 5  # trust-domains: suit-manifest-component-id
M_SET_VERSION: Final = 6  # update-management: suit-set-version
M_VALIDATE: Final = 7
M_LOAD: Final = 8
M_INVOKE: Final = 9
M_COSWID: Final = 14  # update-management: suit-coswid (severable)
M_PAYLOAD_FETCH: Final = 16
M_INSTALL: Final = 20
M_TEXT: Final = 23

SEVERABLE: Final[dict[int, str]] = {
    M_PAYLOAD_FETCH: "payload-fetch",
    M_INSTALL: "install",
    M_TEXT: "text",
    M_COSWID: "coswid",
}
UNSEVERABLE_SEQUENCES: Final[dict[int, str]] = {
    M_VALIDATE: "validate",
    M_LOAD: "load",
    M_INVOKE: "invoke",
}
MANIFEST_KEY_NAMES: Final[dict[int, str]] = {
    M_VERSION: "manifest-version",
    M_SEQUENCE: "manifest-sequence-number",
    M_COMMON: "common",
    M_REFERENCE_URI: "reference-uri",
    M_MANIFEST_COMPONENT_ID: "manifest-component-id",
    M_SET_VERSION: "set-version",
    **UNSEVERABLE_SEQUENCES,
    **SEVERABLE,
}

# --- SUIT_Common members --------------------------------------------------------------------------
C_COMPONENTS: Final = 2
C_SHARED_SEQUENCE: Final = 4

# --- digest algorithms (COSE) ---------------------------------------------------------------------
ALG_SHA256: Final = -16
ALG_SHA384: Final = -43
ALG_SHA512: Final = -44
DIGEST_ALGS: Final[dict[int, tuple[str, int]]] = {
    ALG_SHA256: ("sha256", 32),
    ALG_SHA384: ("sha384", 48),
    ALG_SHA512: ("sha512", 64),
}

# --- conditions -----------------------------------------------------------------------------------
COND_VENDOR_ID: Final = 1
COND_CLASS_ID: Final = 2
COND_IMAGE_MATCH: Final = 3
COND_USE_BEFORE: Final = 4  # update-management
COND_COMPONENT_SLOT: Final = 5
COND_CHECK_CONTENT: Final = 6
COND_ABORT: Final = 14
COND_DEVICE_ID: Final = 24
COND_IMAGE_NOT_MATCH: Final = 25  # update-management
COND_MINIMUM_BATTERY: Final = 26  # update-management
COND_UPDATE_AUTHORIZED: Final = 27  # update-management
COND_VERSION: Final = 28  # update-management
# Custom conditions (negative = SUIT_Command_Custom); this product's choice, see docs/suit.md.
COND_SECURITY_COUNTER: Final = -257  # device counter <= parameter -257, else fail
COND_PAYLOAD_FORMAT: Final = -258  # device installs the format named by parameter -258, else fail

CONDITIONS: Final[dict[int, str]] = {
    COND_VENDOR_ID: "condition-vendor-identifier",
    COND_CLASS_ID: "condition-class-identifier",
    COND_IMAGE_MATCH: "condition-image-match",
    COND_USE_BEFORE: "condition-use-before",
    COND_COMPONENT_SLOT: "condition-component-slot",
    COND_CHECK_CONTENT: "condition-check-content",
    COND_ABORT: "condition-abort",
    COND_DEVICE_ID: "condition-device-identifier",
    COND_IMAGE_NOT_MATCH: "condition-image-not-match",
    COND_MINIMUM_BATTERY: "condition-minimum-battery",
    COND_UPDATE_AUTHORIZED: "condition-update-authorized",
    COND_VERSION: "condition-version",
}
CUSTOM_CONDITIONS: Final[dict[int, str]] = {
    COND_SECURITY_COUNTER: "condition-security-counter",
    COND_PAYLOAD_FORMAT: "condition-payload-format",
}

# --- directives -----------------------------------------------------------------------------------
DIR_SET_COMPONENT_INDEX: Final = 12
DIR_TRY_EACH: Final = 15
DIR_WRITE: Final = 18
DIR_OVERRIDE_PARAMETERS: Final = 20
DIR_FETCH: Final = 21
DIR_COPY: Final = 22
DIR_INVOKE: Final = 23
DIR_WAIT: Final = 29  # update-management
DIR_SWAP: Final = 31
DIR_RUN_SEQUENCE: Final = 32
DIR_OVERRIDE_MULTIPLE: Final = 34  # update-management
DIR_COPY_PARAMS: Final = 35  # update-management

DIRECTIVES: Final[dict[int, str]] = {
    DIR_SET_COMPONENT_INDEX: "set-component-index",
    DIR_TRY_EACH: "try-each",
    DIR_WRITE: "write",
    DIR_OVERRIDE_PARAMETERS: "override-parameters",
    DIR_FETCH: "fetch",
    DIR_COPY: "copy",
    DIR_INVOKE: "invoke",
    DIR_WAIT: "wait",
    DIR_SWAP: "swap",
    DIR_RUN_SEQUENCE: "run-sequence",
    DIR_OVERRIDE_MULTIPLE: "override-multiple",
    DIR_COPY_PARAMS: "copy-params",
}
# Only these may appear in the shared sequence (draft-ietf-suit-manifest SUIT_Shared_Commands),
# besides the standard conditions.
SHARED_DIRECTIVES: Final = frozenset(
    {DIR_SET_COMPONENT_INDEX, DIR_RUN_SEQUENCE, DIR_TRY_EACH, DIR_OVERRIDE_PARAMETERS}
)

# --- parameters -----------------------------------------------------------------------------------
P_VENDOR_ID: Final = 1
P_CLASS_ID: Final = 2
P_IMAGE_DIGEST: Final = 3
P_USE_BEFORE: Final = 4  # update-management
P_COMPONENT_SLOT: Final = 5
P_STRICT_ORDER: Final = 12
P_SOFT_FAILURE: Final = 13
P_IMAGE_SIZE: Final = 14
P_CONTENT: Final = 18
P_ENCRYPTION_INFO: Final = 19  # firmware-encryption: bstr .cbor COSE_Encrypt / COSE_Encrypt0
P_URI: Final = 21
P_SOURCE_COMPONENT: Final = 22
P_INVOKE_ARGS: Final = 23
P_DEVICE_ID: Final = 24
P_FETCH_ARGUMENTS: Final = 25
P_MINIMUM_BATTERY: Final = 26  # update-management
P_UPDATE_PRIORITY: Final = 27  # update-management
P_VERSION: Final = 28  # update-management
P_WAIT_INFO: Final = 29  # update-management
P_COMPONENT_METADATA: Final = 30  # update-management
# Custom parameters (negative = suit-parameter-custom); this product's choice, see docs/suit.md.
P_SECURITY_COUNTER: Final = -257  # uint: anti-rollback counter of the image
P_PAYLOAD_FORMAT: Final = -258  # tstr: "raw" | "mcuboot"
# bstr .cbor [+ SUIT_Digest]: the images a delta to this manifest's image may be applied to (RFC
# 9124's precursor image digest); consulted only when the device is handed a delta.
P_PRECURSOR_DIGESTS: Final = -259
# The delta source component (draft form, docs/suit.md "Deltas"): the running image slot of the
# manifest's one component, named by that component's id plus this last part.
SOURCE_SLOT: Final = b"running"

PARAMETERS: Final[dict[int, str]] = {
    P_VENDOR_ID: "vendor-id",
    P_CLASS_ID: "class-id",
    P_IMAGE_DIGEST: "image-digest",
    P_USE_BEFORE: "use-before",
    P_COMPONENT_SLOT: "component-slot",
    P_STRICT_ORDER: "strict-order",
    P_SOFT_FAILURE: "soft-failure",
    P_IMAGE_SIZE: "image-size",
    P_CONTENT: "content",
    P_ENCRYPTION_INFO: "encryption-info",
    P_URI: "uri",
    P_SOURCE_COMPONENT: "source-component",
    P_INVOKE_ARGS: "invoke-args",
    P_DEVICE_ID: "device-id",
    P_FETCH_ARGUMENTS: "fetch-arguments",
    P_MINIMUM_BATTERY: "minimum-battery",
    P_UPDATE_PRIORITY: "update-priority",
    P_VERSION: "version",
    P_WAIT_INFO: "wait-info",
    P_COMPONENT_METADATA: "component-metadata",
    P_SECURITY_COUNTER: "security-counter",
    P_PAYLOAD_FORMAT: "payload-format",
    P_PRECURSOR_DIGESTS: "precursor-digests",
}

PAYLOAD_FORMATS: Final = ("raw", "mcuboot")

# --- suit-parameter-version comparison types (update-management) ----------------------------------
VERSION_COMPARISONS: Final[dict[int, str]] = {
    1: "greater",
    2: "greater-equal",
    3: "equal",
    4: "lesser-equal",
    5: "lesser",
}
VERSION_COMPARISON_CODES: Final[dict[str, int]] = {v: k for k, v in VERSION_COMPARISONS.items()}
PRERELEASE: Final[dict[int, str]] = {-1: "rc", -2: "beta", -3: "alpha"}

# --- suit-text ------------------------------------------------------------------------------------
TEXT_KEYS: Final[dict[int, str]] = {
    1: "manifest-description",
    2: "update-description",
    3: "manifest-json-source",
    4: "manifest-yaml-source",
}
TEXT_COMPONENT_KEYS: Final[dict[int, str]] = {
    1: "vendor-name",
    2: "model-name",
    3: "vendor-domain",
    4: "model-info",
    5: "component-description",
    6: "component-version",
    7: "version-required",  # update-management
    8: "current-version",  # update-management
}
TEXT_LANGUAGE: Final = "en"
TEXT_CURRENT_VERSION: Final = 8  # update-management: suit-text-current-version (component text)

# --- COSE -----------------------------------------------------------------------------------------
HDR_ALG: Final = 1
HDR_CRIT: Final = 2
HDR_CONTENT_TYPE: Final = 3
HDR_KID: Final = 4

ALG_ES256: Final = -7
ALG_ESP256: Final = -9
ALG_EDDSA: Final = -8
ALG_ED25519: Final = -19
EC_ALGS: Final = frozenset({ALG_ES256, ALG_ESP256})
ED_ALGS: Final = frozenset({ALG_EDDSA, ALG_ED25519})
SIGNATURE_ALGS: Final[dict[int, str]] = {
    ALG_ES256: "ES256",
    ALG_ESP256: "ESP256",
    ALG_EDDSA: "EdDSA",
    ALG_ED25519: "Ed25519",
}
SIGNATURE_LENGTH: Final = 64  # ES256 raw r||s and Ed25519 both
# What the builder writes (the MTI profiles' fully specified algorithms); -7 / -8 still verify.
SIGN_ALG_FOR_FAMILY: Final[dict[str, int]] = {"ES256": ALG_ESP256, "Ed25519": ALG_ED25519}
ALG_HMAC256: Final = 5  # HMAC 256/256 (RFC 9053), COSE_Mac0 authentication blocks
MAC_ALGS: Final[dict[int, str]] = {ALG_HMAC256: "HMAC-256"}
MAC_LENGTH: Final = 32

# --- manifest profiles (docs/suit.md, "Manifest profiles") ---------------------------------------
# extended: the product's custom security counter and payload format (-257/-258) in install.
# standard: no custom keys; the sequence number is the anti-rollback floor, so a stock SUIT
# processor accepts the envelope.
PROFILE_STANDARD: Final = "standard"
PROFILE_EXTENDED: Final = "extended"
PROFILES: Final = (PROFILE_STANDARD, PROFILE_EXTENDED)
