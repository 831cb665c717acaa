"""Release-side services; import from here.

The package is layered by concern; a module imports only modules on a floor below its own:

    roles, policies, delegations, keys   state changes that re-evaluate releases
    encryption                           payload key-encryption keys, encrypted payloads
    deltas                               delta images: computed once per pair, offered per device
    releases, catalog, trust             releases and approval; vendors, classes, images,
                                         manifests; device trust policies
    facts                                rows turned into ``manifests.policy`` facts (reads only)
    access                               roles_of, require_role, the named role sets (models only)
"""

from manifests.services.access import delegated_roles, require_role, roles_of
from manifests.services.catalog import (
    device_class_create,
    device_class_set_delivery,
    device_class_set_delta,
    device_class_set_manifest_profile,
    device_class_update,
    image_is_confidential,
    image_storage,
    image_upload,
    integrated_envelope,
    manifest_import,
    vendor_create,
)
from manifests.services.delegations import delegation_create, delegation_revoke
from manifests.services.deltas import DeltaOffer, delta_ensure, delta_offer
from manifests.services.encryption import (
    active_image_key,
    active_payload_key,
    encryption_info_digest,
    image_build_encrypted,
    image_encryption_key_set,
    payload_encrypt,
    payload_key_rotate,
    payload_key_secret,
)
from manifests.services.facts import key_is_usable, load_release_facts, policy_for
from manifests.services.keys import key_revoke, key_rotate, signing_key_register
from manifests.services.policies import policy_set
from manifests.services.releases import (
    ApprovalCapacity,
    EnvelopeFreeze,
    ReleaseDispatchState,
    approval_capacities,
    release_approve,
    release_create,
    release_dispatch_state,
    release_evaluate,
    release_revoke,
    release_submit,
    released_envelope,
    released_envelopes_freeze,
    releases_reevaluate,
)
from manifests.services.roles import role_grant, role_revoke
from manifests.services.trust import (
    trust_policies_after_revocation,
    trust_policy_draft,
    trust_policy_refusal,
    trust_policy_release,
    trust_policy_sign,
)

__all__ = [
    "ApprovalCapacity",
    "DeltaOffer",
    "EnvelopeFreeze",
    "ReleaseDispatchState",
    "active_image_key",
    "active_payload_key",
    "approval_capacities",
    "delegated_roles",
    "delegation_create",
    "delegation_revoke",
    "delta_ensure",
    "delta_offer",
    "device_class_create",
    "device_class_set_delivery",
    "device_class_set_delta",
    "device_class_set_manifest_profile",
    "device_class_update",
    "encryption_info_digest",
    "image_build_encrypted",
    "image_encryption_key_set",
    "image_is_confidential",
    "image_storage",
    "image_upload",
    "integrated_envelope",
    "key_is_usable",
    "key_revoke",
    "key_rotate",
    "load_release_facts",
    "manifest_import",
    "payload_encrypt",
    "payload_key_rotate",
    "payload_key_secret",
    "policy_for",
    "policy_set",
    "release_approve",
    "release_create",
    "release_dispatch_state",
    "release_evaluate",
    "release_revoke",
    "release_submit",
    "released_envelope",
    "released_envelopes_freeze",
    "releases_reevaluate",
    "require_role",
    "role_grant",
    "role_revoke",
    "roles_of",
    "signing_key_register",
    "trust_policies_after_revocation",
    "trust_policy_draft",
    "trust_policy_refusal",
    "trust_policy_release",
    "trust_policy_sign",
    "vendor_create",
]
