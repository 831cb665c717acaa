"""Errors of the release side (Django layer). The pure codec has its own tree (SUITError).

Each class carries a stable ``code`` the API and CLI report; messages say what was refused and why.
"""

from __future__ import annotations


class ManifestError(Exception):
    """A release-side operation was refused; nothing was written."""

    code = "manifest.error"


class VendorExistsError(ManifestError):
    """A vendor with that domain is already registered."""

    code = "manifest.vendor_exists"


class UnknownVendorError(ManifestError):
    """The manifest or request names a vendor this server does not know."""

    code = "manifest.unknown_vendor"


class DeviceClassExistsError(ManifestError):
    """A device class with that name already exists for the vendor."""

    code = "manifest.device_class_exists"


class UnknownDeviceClassError(ManifestError):
    """The manifest or request names a device class this server does not know."""

    code = "manifest.unknown_device_class"


class ImageTooLargeError(ManifestError):
    """The uploaded image exceeds FIRMWARE_MAX_IMAGE_SIZE."""

    code = "manifest.image_too_large"


class InvalidImageError(ManifestError):
    """The uploaded image is malformed or its MCUboot hash does not match."""

    code = "manifest.invalid_image"


class ImageNotFoundError(ManifestError):
    """No stored image has the digest and size the manifest names."""

    code = "manifest.image_not_found"


class ManifestImageMismatchError(ManifestError):
    """The manifest's version, security counter or format contradicts the image it installs."""

    code = "manifest.image_mismatch"


class ManifestComponentError(ManifestError):
    """The manifest targets a component or payload format the device class does not use."""

    code = "manifest.component_mismatch"


class DeliveryProfileError(ManifestError):
    """The delivery profile or delivery method is not one this server knows."""

    code = "manifest.delivery_profile"


class DeltaSettingError(ManifestError):
    """A device class's delta setting names a compression the devices cannot decode."""

    code = "manifest.delta_setting"


class PayloadURIError(ManifestError):
    """The manifest's payload URI is one its device class's delivery profile could not serve."""

    code = "manifest.payload_uri"


class PayloadEncryptionError(ManifestError):
    """A payload cannot be encrypted for the class (no key-encryption key and no device key,
    or a stored key that does not decrypt under the deployment secret)."""

    code = "manifest.payload_encryption"


class PayloadKeyStateError(ManifestError):
    """A rotation of a class key that is no longer the class's active one (another rotation
    came first): nothing changed."""

    code = "manifest.payload_key_state"


class EncryptionRequiredError(ManifestError):
    """The class has a payload key-encryption key, so it takes encrypted payloads only."""

    code = "manifest.encryption_required"


class UnknownEncryptionInfoError(ManifestError):
    """The manifest's encryption info is not one this server produced for the class and image
    (its ciphertext would not be served, or its content key is unknown)."""

    code = "manifest.encryption_unknown"


class DeliveryConflictError(ManifestError):
    """A live release of the class names a payload URI the new delivery profile could not serve."""

    code = "manifest.delivery_conflict"


class ManifestProfileError(ManifestError):
    """Unknown manifest profile, or an envelope not of its device class's profile."""

    code = "manifest.profile"


class ManifestProfileConflictError(ManifestError):
    """The class's manifest profile cannot change while it has live releases."""

    code = "manifest.profile_conflict"


class InvalidManifestError(ManifestError):
    """The envelope does not decode as a SUIT manifest (wraps the codec's SUITError)."""

    code = "manifest.invalid"

    def __init__(self, message: str, *, suit_code: str) -> None:
        super().__init__(message)
        self.suit_code = suit_code


class DuplicateManifestError(ManifestError):
    """This exact manifest (same digest) is already stored."""

    code = "manifest.duplicate"


class SequenceNumberConflictError(ManifestError):
    """Another manifest of the device class already uses that sequence number."""

    code = "manifest.sequence_conflict"


class UntrustedManifestError(ManifestError):
    """No signature on the envelope verifies with an active registered key of a known user."""

    code = "manifest.untrusted"


class InvalidKeyError(ManifestError):
    """The public key is malformed or of an unsupported type (only P-256 and Ed25519)."""

    code = "manifest.invalid_key"


class KeyExistsError(ManifestError):
    """That public key (same kid) is already registered."""

    code = "manifest.key_exists"


class ImmutableRecordError(ManifestError):
    """Signed or content-addressed records cannot be changed or deleted once stored."""

    code = "manifest.immutable"


class KeyStateError(ManifestError):
    """The key lifecycle change is not allowed from the key's current state."""

    code = "manifest.key_state"


class ApprovalError(ManifestError):
    """A release, approval, policy, role or delegation change was refused."""

    code = "approval.error"


class PermissionDeniedError(ApprovalError):
    """The acting user does not hold a role that allows this action."""

    code = "approval.permission_denied"


class ReleaseStateError(ApprovalError):
    """The release is not in a state that allows this change."""

    code = "approval.release_state"


class ReleaseExistsError(ApprovalError):
    """A release for that manifest, or with that name, already exists."""

    code = "approval.release_exists"


class SelfApprovalError(ApprovalError):
    """The release author tried to approve their own release in another role."""

    code = "approval.self_approval"


class BadApprovalSignatureError(ApprovalError):
    """The uploaded COSE_Sign1 is malformed or does not verify over this manifest's digest."""

    code = "approval.bad_signature"


class ApprovalKeyError(ApprovalError):
    """The signature's key is unknown, belongs to someone else, or is not valid now."""

    code = "approval.key"


class DuplicateApprovalError(ApprovalError):
    """The same signature, or the same key in the same role, was already uploaded."""

    code = "approval.duplicate"


class NotAuthorizedToApproveError(ApprovalError):
    """The signer neither holds the role nor is reached by a live delegation of it in scope."""

    code = "approval.not_authorized"


class DelegationError(ApprovalError):
    """The delegation is malformed, widens its parent's scope, or exceeds the depth bound."""

    code = "approval.delegation"


class InvalidPolicyError(ApprovalError):
    """The release policy document is malformed."""

    code = "approval.bad_policy"


class TrustPolicyServiceError(ManifestError):
    """A device trust policy cannot be drafted, signed or released as asked."""

    code = "trust_policy.error"


class InvalidTrustPolicyError(TrustPolicyServiceError):
    """The policy asked for is malformed: unknown role or key, bad threshold, past expiry."""

    code = "trust_policy.invalid"


class TrustPolicyStateError(TrustPolicyServiceError):
    """The policy is not in the state asked for: signatures go to drafts only, and a class
    without a released policy has none to hand out."""

    code = "trust_policy.state"


class TrustPolicyNotAcceptedError(TrustPolicyStateError):
    """A draft cannot be released: the class's devices would refuse it as signed so far."""

    code = "trust_policy.not_accepted"


class BadTrustPolicySignatureError(TrustPolicyServiceError):
    """The uploaded signature is not a COSE_Sign1 over this policy by a usable key of the
    signer, or that key already signed it."""

    code = "trust_policy.bad_signature"
