"""The REST API's views: parse and validate the request, find the rows, call the service, shape
the answer. No business rule lives here: refusals come from the services and leave through
``api.errors``; who may call what is the table in ``api.permissions``."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, parsers, renderers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import filters, webhooks
from api import serializers as s
from api.models import Webhook, WebhookDelivery
from api.pagination import LimitOffsetPagination
from api.parsers import JSONParser, contains_nul
from api.permissions import request_roles
from audit.chain import canonical_time
from audit.models import AuditEvent
from audit.services import audit_verify
from campaigns import fleet_services, planning, rollback, selectors
from campaigns import services as campaign_services
from campaigns.fleet import DeviceFilter, TagChange
from campaigns.models import Campaign, Device, DeviceGroup, EmergencyStop, Rollout
from campaigns.spec import parse_spec
from campaigns.trust_holdings import protection_of, trust_holders, trust_holdings
from manifests import device_trust, payload_keys, services, suit
from manifests.errors import PayloadEncryptionError, PermissionDeniedError, TrustPolicyStateError
from manifests.models import (
    Delegation,
    DeliveryMethod,
    DeliveryProfile,
    DeviceClass,
    DeviceTrustPolicy,
    FirmwareImage,
    ImageEncryptionKey,
    Manifest,
    ManifestProfile,
    PayloadEncryptionKey,
    Release,
    ReleasePolicy,
    Role,
    RoleAssignment,
    SigningKey,
    TrustPolicyStatus,
    Vendor,
)
from manifests.selectors import current_trust_policy, verdict_dict

# Where the API says a spec came from (it appears in spec error messages and revisions).
SPEC_SOURCE = "api"
# Names may contain dots (thermo-2.0.0; the router's default excludes them), never a control
# character (PostgreSQL refuses NUL in text: a lookup with one would fail, not miss).
NAME_REGEX = r"[^/\x00-\x1f]+"
RECENT_ROLLOUTS = 20  # rollout history rows on a device's page
HOLDERS_PAGE = 100  # devices per page of a class's trust holdings
HOLDERS_MAX = 500  # the list endpoints' own cap


class OctetStreamParser(parsers.BaseParser):
    """The raw request body as bytes (COSE_Sign1 signatures, SUIT envelopes)."""

    media_type = "application/octet-stream"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return stream.read() if stream is not None else b""


class CSVParser(OctetStreamParser):
    """A CSV file posted as the request body (``text/csv``), kept as bytes."""

    media_type = "text/csv"


class SpecTextParser(parsers.BaseParser):
    """A campaign spec posted as YAML text."""

    media_type = "application/yaml"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return {
            "document": (stream.read() if stream is not None else b"").decode("utf-8", "replace")
        }


def _validated(serializer_class: type[Any], request: Request, **kwargs: Any) -> dict[str, Any]:
    serializer = serializer_class(data=request.data, context={"request": request}, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def _uploaded_bytes(request: Request, field: str = "file") -> tuple[bytes, str]:
    """The body of an octet-stream request, or the named multipart file."""
    if isinstance(request.data, bytes):
        return request.data, ""
    upload = request.FILES.get(field)
    if upload is None:
        raise ValidationError({field: ["a file is required (multipart) or send the raw bytes"]})
    return upload.read(), upload.name or ""


CBOR = "application/cbor"


class CBORRenderer(renderers.BaseRenderer):
    """Lets a client ask for an envelope with ``Accept: application/cbor`` (the media type it
    is served as). The bytes are passed through as stored; the view builds the response."""

    media_type = CBOR
    format = "cbor"
    charset = None
    render_style = "binary"

    def render(self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None):
        return data if isinstance(data, bytes) else b""


ENVELOPE_RENDERERS = [renderers.JSONRenderer, CBORRenderer]


class JSONErrorsMixin:
    """An error from an envelope endpoint is the JSON error body even when the client asked
    only for CBOR (a 404 or 409 has no CBOR form)."""

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(response, "exception", False) and isinstance(
            getattr(request, "accepted_renderer", None), CBORRenderer
        ):
            request.accepted_renderer = renderers.JSONRenderer()
            request.accepted_media_type = "application/json"
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]


def _binary(data: bytes, filename: str, content_type: str = CBOR) -> HttpResponse:
    response = HttpResponse(data, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


BINARY_RESPONSE = {(200, CBOR): OpenApiTypes.BINARY}


# --- the index -----------------------------------------------------------------------------------
class ApiRootView(APIView):
    """``/api/``: where to go from here. The README points API users at /api/; they expect
    the entry points (as DRF's browsable root lists them) and the docs, not a 404."""

    router: Any = None  # the API's router, given by api/urls.py (it imports this module)

    @extend_schema(responses=OpenApiTypes.OBJECT, summary="The API's entry points and its docs")
    def get(self, request: Request) -> Response:
        entry_points = {
            pattern.name: request.build_absolute_uri(reverse(pattern.name))
            for pattern in self.router.urls
            if pattern.name and not pattern.pattern.regex.groupindex
        }
        return Response(
            {
                "docs": request.build_absolute_uri(reverse("swagger-ui")),
                "schema": request.build_absolute_uri(reverse("schema")),
                "me": request.build_absolute_uri(reverse("me")),
                "entry_points": dict(sorted(entry_points.items())),
            }
        )


# --- who am I ------------------------------------------------------------------------------------
class MeView(APIView):
    @extend_schema(responses=s.MeSerializer, summary="The signed-in user and their roles now")
    def get(self, request: Request) -> Response:
        return Response(
            {"username": request.user.get_username(), "roles": sorted(request_roles(request))}
        )


# --- catalog -------------------------------------------------------------------------------------
class VendorViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Vendor.objects.all()
    serializer_class = s.VendorSerializer
    filterset_class = filters.VendorFilter
    ordering_fields = ["domain", "name", "created_at"]

    def create(self, request: Request) -> Response:
        data = _validated(s.VendorSerializer, request)
        vendor = services.vendor_create(
            name=data["name"], domain=data["domain"], actor=request.user
        )
        return Response(s.VendorSerializer(vendor).data, status=status.HTTP_201_CREATED)


class DeviceClassViewSet(
    JSONErrorsMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    queryset = DeviceClass.objects.select_related("vendor")
    serializer_class = s.DeviceClassSerializer
    filterset_class = filters.DeviceClassFilter
    ordering_fields = ["name", "created_at"]

    def create(self, request: Request) -> Response:
        data = _validated(s.DeviceClassSerializer, request)
        device_class = services.device_class_create(
            vendor=data["vendor"],
            name=data["name"],
            component_id=data.get("component_id"),
            payload_format=data.get("payload_format", "mcuboot"),
            delivery=data.get("delivery", DeliveryProfile.IMAGE),
            delivery_method=data.get("delivery_method", DeliveryMethod.AUTO),
            manifest_profile=data.get("manifest_profile", ManifestProfile.EXTENDED),
            description=data.get("description", ""),
            actor=request.user,
        )
        return Response(s.DeviceClassSerializer(device_class).data, status=201)

    @extend_schema(
        request=s.DeviceClassDeliverySerializer,
        responses={200: s.DeviceClassSerializer},
        summary="Change how the class's devices take firmware or its manifest profile "
        "(admin; audited)",
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        device_class = self.get_object()
        data = _validated(s.DeviceClassDeliverySerializer, request)
        device_class = services.device_class_update(
            device_class=device_class,
            delivery=data.get("delivery"),
            delivery_method=data.get("delivery_method"),
            manifest_profile=data.get("manifest_profile"),
            delta_updates=data.get("delta_updates"),
            delta_compression=data.get("delta_compression"),
            delta_patch_type=data.get("delta_patch_type"),
            actor=request.user,
        )
        return Response(s.DeviceClassSerializer(device_class).data)

    @extend_schema(
        responses={**BINARY_RESPONSE, 409: s.ErrorSerializer},
        summary="The class's released device trust policy of the highest version, the exact "
        "signed document its SUIT devices hold (409 while it has none; docs/suit.md)",
    )
    @action(
        detail=True, methods=["get"], url_path="trust-policy", renderer_classes=ENVELOPE_RENDERERS
    )
    def trust_policy(self, request: Request, pk: str) -> HttpResponse:
        device_class = self.get_object()
        policy = current_trust_policy(device_class)
        if policy is None or policy.document is None:
            raise TrustPolicyStateError(f"{device_class} has no released device trust policy")
        return _binary(bytes(policy.document), f"trust-policy-v{policy.version}.cbor")

    @extend_schema(
        parameters=[
            OpenApiParameter("limit", int, description=f"holders per page (1..{HOLDERS_MAX})"),
            OpenApiParameter("offset", int, description="holders to skip"),
        ],
        responses=s.TrustHoldingsSerializer,
        summary="Which device trust policy the class's devices hold, and which of them check "
        "approval thresholds themselves (device) or are protected by the server only",
    )
    @action(detail=True, methods=["get"], url_path="trust-holdings")
    def trust_holdings(self, request: Request, pk: str) -> Response:
        device_class = self.get_object()
        paginator = LimitOffsetPagination()
        paginator.default_limit, paginator.max_limit = HOLDERS_PAGE, HOLDERS_MAX
        limit = paginator.get_limit(request) or HOLDERS_PAGE
        offset = paginator.get_offset(request)
        holdings = trust_holdings(device_class)
        page = list(trust_holders(device_class)[offset : offset + limit + 1])
        return Response(
            {
                "device_class": device_class.pk,
                "device_class_name": str(device_class),
                "delivery": device_class.delivery,
                "device_side_thresholds": holdings.device_side,
                "statement": (
                    "device-side thresholds: " if holdings.device_side else "server only: "
                )
                + holdings.why,
                "current_version": holdings.current_version,
                "current_sha256": holdings.current_sha256,
                "devices": holdings.devices,
                "protected_on_device": holdings.protected_on_device,
                "server_only": holdings.server_only,
                "by_version": [{"version": v, "devices": n} for v, n in holdings.by_version],
                "holders": [
                    {
                        "endpoint": d.endpoint,
                        "trust_policy_version": d.trust_policy_version,
                        "trust_policy_sha256": d.trust_policy_sha256,
                        "trust_policy_confirmed_at": d.trust_policy_confirmed_at,
                        "protection": protection_of(d, device_side=holdings.device_side),
                    }
                    for d in page[:limit]
                ],
                "next_offset": offset + limit if len(page) > limit else None,
            }
        )


class ImageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = FirmwareImage.objects.select_related("uploaded_by")
    serializer_class = s.ImageSerializer
    filterset_class = filters.ImageFilter
    lookup_field = "sha256"
    lookup_value_regex = "[0-9a-f]{64}"
    parser_classes = [parsers.MultiPartParser]
    ordering_fields = ["created_at", "version", "size"]

    @extend_schema(
        request=s.ImageUploadSerializer,
        responses={201: s.ImageSerializer, 413: s.ErrorSerializer},
    )
    def create(self, request: Request) -> Response:
        data, filename = _uploaded_bytes(request)
        image = services.image_upload(data=data, filename=filename, actor=request.user)
        return Response(s.ImageSerializer(image).data, status=201)


class ManifestViewSet(
    JSONErrorsMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    queryset = Manifest.objects.select_related(
        "device_class__vendor", "author_key", "created_by", "release"
    ).defer("envelope")
    serializer_class = s.ManifestSerializer
    filterset_class = filters.ManifestFilter
    lookup_field = "manifest_digest"
    lookup_value_regex = "[0-9a-f]{64}"
    parser_classes = [OctetStreamParser, parsers.MultiPartParser]
    ordering_fields = ["created_at", "sequence_number"]

    @extend_schema(responses=s.ManifestDetailSerializer)
    def retrieve(self, request: Request, manifest_digest: str) -> Response:
        manifest = get_object_or_404(Manifest.objects.all(), manifest_digest=manifest_digest)
        data = s.ManifestSerializer(manifest).data
        data["decoded"] = suit.decode_envelope(manifest.envelope_bytes).to_json_dict()
        return Response(data)

    @extend_schema(
        request={
            "application/octet-stream": OpenApiTypes.BINARY,
            "multipart/form-data": s.ManifestUploadSerializer,
        },
        responses={201: s.ManifestDetailSerializer},
        summary="Import an author-signed SUIT envelope (raw CBOR or hex)",
    )
    def create(self, request: Request) -> Response:
        data, _ = _uploaded_bytes(request)
        envelope = suit.read_envelope_input(data, max_size=settings.SUIT_MAX_ENVELOPE_SIZE)
        manifest = services.manifest_import(envelope=envelope, created_by=request.user)
        body = s.ManifestSerializer(manifest).data
        body["decoded"] = suit.decode_envelope(manifest.envelope_bytes).to_json_dict()
        return Response(body, status=201)

    @extend_schema(responses=BINARY_RESPONSE, summary="The exact envelope bytes as imported")
    @action(detail=True, methods=["get"], renderer_classes=ENVELOPE_RENDERERS)
    def envelope(self, request: Request, manifest_digest: str) -> HttpResponse:
        manifest = get_object_or_404(Manifest.objects.all(), manifest_digest=manifest_digest)
        return _binary(manifest.envelope_bytes, f"{manifest.manifest_digest[:16]}.suit")


# --- releases ------------------------------------------------------------------------------------
def _release_detail(release: Release) -> dict[str, Any]:
    verdict = services.release_evaluate(release)
    data = s.ReleaseSerializer(release).data
    data["approval"] = {**verdict_dict(release, verdict), "summary": verdict.summary()}
    return data


def _manifest_by_prefix(prefix: str) -> Manifest:
    matches = list(Manifest.objects.filter(manifest_digest__startswith=prefix.lower())[:2])
    if len(matches) != 1:
        raise ValidationError(
            {
                "manifest": [
                    f"{'no' if not matches else 'more than one'} manifest matches {prefix!r}"
                ]
            }
        )
    return matches[0]


class ReleaseViewSet(JSONErrorsMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    queryset = Release.objects.select_related(
        "manifest__device_class__vendor", "created_by", "revoked_by"
    )
    serializer_class = s.ReleaseSerializer
    filterset_class = filters.ReleaseFilter
    lookup_field = "name"
    lookup_value_regex = NAME_REGEX
    ordering_fields = ["created_at", "name", "status"]

    def _release(self, name: str) -> Release:
        return get_object_or_404(self.get_queryset(), name=name)

    @extend_schema(responses=s.ReleaseDetailSerializer, summary="A release with its tally")
    def retrieve(self, request: Request, name: str) -> Response:
        return Response(_release_detail(self._release(name)))

    @extend_schema(request=s.ReleaseCreateSerializer, responses={201: s.ReleaseDetailSerializer})
    def create(self, request: Request) -> Response:
        data = _validated(s.ReleaseCreateSerializer, request)
        release = services.release_create(
            manifest=_manifest_by_prefix(data["manifest"]),
            name=data["name"],
            kind=data["kind"],
            target_groups=data["target_groups"],
            notes=data["notes"],
            actor=request.user,
        )
        if data["submit"]:
            services.release_submit(release=release, actor=request.user)
        return Response(_release_detail(self._release(release.name)), status=201)

    @extend_schema(request=None, responses=s.ReleaseDetailSerializer)
    @action(detail=True, methods=["post"])
    def submit(self, request: Request, name: str) -> Response:
        services.release_submit(release=self._release(name), actor=request.user)
        return Response(_release_detail(self._release(name)))

    @extend_schema(
        request={
            "application/json": s.ApprovalUploadSerializer,
            "application/octet-stream": OpenApiTypes.BINARY,
        },
        parameters=[
            OpenApiParameter(
                "role",
                str,
                enum=s.APPROVING_ROLES,
                description="the role you approve in (for a raw application/octet-stream body)",
            )
        ],
        responses={201: s.ApprovalResultSerializer},
        summary="Upload one COSE_Sign1 approval signature over the manifest digest",
    )
    @action(detail=True, methods=["post"], parser_classes=[JSONParser, OctetStreamParser])
    def approvals(self, request: Request, name: str) -> Response:
        release = self._release(name)
        if isinstance(request.data, bytes):
            data = _validated(
                s.ApprovalUploadSerializer,
                _QueryRole(request),
            )
        else:
            data = _validated(s.ApprovalUploadSerializer, request)
        approval, verdict = services.release_approve(
            release=release, signer=request.user, role=data["role"], cose=data["signature"]
        )
        return Response(
            {
                "approval": approval.pk,
                "approved": verdict.approved,
                "summary": verdict.summary(),
                "release": _release_detail(self._release(name)),
            },
            status=201,
        )

    @extend_schema(request=s.ReasonSerializer, responses=s.ReleaseDetailSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, name: str) -> Response:
        data = _validated(s.ReasonSerializer, request)
        services.release_revoke(
            release=self._release(name), reason=data["reason"], actor=request.user
        )
        return Response(_release_detail(self._release(name)))

    @extend_schema(
        responses={**BINARY_RESPONSE, 409: s.ErrorSerializer},
        summary="The released envelope, with every counted approval signature (409 until "
        "the release is approved)",
    )
    @action(detail=True, methods=["get"], renderer_classes=ENVELOPE_RENDERERS)
    def envelope(self, request: Request, name: str) -> HttpResponse:
        release = self._release(name)
        return _binary(services.released_envelope(release), f"{release.name}.suit")


# --- device trust policies -----------------------------------------------------------------------
def _trust_policy_detail(policy: DeviceTrustPolicy) -> dict[str, Any]:
    """A policy with its roles (decoded from its exact body), signatures and, for a draft, why
    its devices would still refuse it."""
    data = s.TrustPolicySerializer(policy).data
    data["roles"] = {
        role: {"threshold": rule.threshold, "kids": sorted(k.hex() for k in rule.kids)}
        for role, rule in device_trust.body_roles(policy.body_bytes).items()
    }
    data["signatures"] = s.TrustPolicySignatureSerializer(
        policy.signatures.select_related("signer", "key").order_by("pk"), many=True
    ).data
    data["refusal"] = (
        services.trust_policy_refusal(policy, now=timezone.now())
        if policy.status == TrustPolicyStatus.DRAFT
        else None
    )
    return data


class TrustPolicyViewSet(JSONErrorsMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Device trust policies (docs/suit.md, "Device trust policy"): draft one for a class,
    upload signatures made offline over its body, release it when the class's devices would
    accept it. The services decide; a draft is released by the device's own rule."""

    queryset = (
        DeviceTrustPolicy.objects.select_related("device_class__vendor", "created_by")
        .annotate(signature_count=Count("signatures"))
        .order_by("device_class_id", "-version")
    )
    serializer_class = s.TrustPolicySerializer
    filterset_class = filters.TrustPolicyFilter
    ordering_fields = ["version", "created_at"]

    def _policy(self, pk: str) -> DeviceTrustPolicy:
        if not pk.isdigit() or int(pk) > filters.ID_MAX:
            raise NotFound("no such trust policy")
        return get_object_or_404(self.get_queryset(), pk=int(pk))

    @extend_schema(responses=s.TrustPolicyDetailSerializer, summary="A policy, decoded")
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(_trust_policy_detail(self._policy(pk)))

    @extend_schema(
        request=s.TrustPolicyDraftSerializer,
        responses={201: s.TrustPolicyDetailSerializer},
        summary="Draft the next version of a class's trust policy (security, admin; audited)",
    )
    def create(self, request: Request) -> Response:
        data = _validated(s.TrustPolicyDraftSerializer, request)
        policy = services.trust_policy_draft(
            device_class=data["device_class"],
            roles={
                role: (rule["threshold"], [kid.lower() for kid in rule["kids"]])
                for role, rule in data["roles"].items()
            },
            expires_at=data["expires_at"],
            reason=data["reason"],
            actor=request.user,
        )
        return Response(_trust_policy_detail(self._policy(str(policy.pk))), status=201)

    @extend_schema(
        responses={**BINARY_RESPONSE, 404: s.ErrorSerializer},
        summary="The exact body bytes to sign (detached COSE_Sign1, docs/suit.md)",
    )
    @action(detail=True, methods=["get"], renderer_classes=ENVELOPE_RENDERERS)
    def body(self, request: Request, pk: str) -> HttpResponse:
        policy = self._policy(pk)
        return _binary(policy.body_bytes, f"trust-policy-v{policy.version}.body.cbor")

    @extend_schema(
        responses={**BINARY_RESPONSE, 409: s.ErrorSerializer},
        summary="The released signed document, as devices download it (409 while a draft)",
    )
    @action(detail=True, methods=["get"], renderer_classes=ENVELOPE_RENDERERS)
    def document(self, request: Request, pk: str) -> HttpResponse:
        policy = self._policy(pk)
        if policy.document is None:
            raise TrustPolicyStateError(f"{policy} is not released yet")
        return _binary(bytes(policy.document), f"trust-policy-v{policy.version}.cbor")

    @extend_schema(
        request={
            "application/json": s.TrustPolicySignUploadSerializer,
            "application/octet-stream": OpenApiTypes.BINARY,
        },
        responses={201: s.TrustPolicySignResultSerializer},
        summary="Upload one COSE_Sign1 over the policy body, made offline with your key; the "
        "draft is released as soon as its devices would accept it",
    )
    @action(detail=True, methods=["post"], parser_classes=[JSONParser, OctetStreamParser])
    def signatures(self, request: Request, pk: str) -> Response:
        policy = self._policy(pk)
        if isinstance(request.data, bytes):
            cose = request.data
        else:
            cose = _validated(s.TrustPolicySignUploadSerializer, request)["signature"]
        signed = services.trust_policy_sign(policy=policy, signer=request.user, cose=cose)
        return Response(
            {
                "released": signed.status == TrustPolicyStatus.RELEASED,
                "policy": _trust_policy_detail(self._policy(pk)),
            },
            status=201,
        )

    @extend_schema(
        request=None,
        responses={200: s.TrustPolicyDetailSerializer, 409: s.ErrorSerializer},
        summary="Release a draft its devices would accept (idempotent; 409 "
        "trust_policy.not_accepted with the device rule's reason otherwise)",
    )
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str) -> Response:
        services.trust_policy_release(policy=self._policy(pk), actor=request.user)
        return Response(_trust_policy_detail(self._policy(pk)))


class _QueryRole:
    """A raw-signature upload's fields: the body is the signature, the role a query param."""

    def __init__(self, request: Request) -> None:
        self.data = {
            "role": request.query_params.get("role", ""),
            "signature": base64.b64encode(request.data).decode(),
        }


# --- keys, policies, roles, delegations ----------------------------------------------------------
class KeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = SigningKey.objects.select_related("owner", "replaced_by")
    serializer_class = s.KeySerializer
    filterset_class = filters.KeyFilter
    lookup_field = "kid"
    lookup_value_regex = "[0-9a-f]+"
    ordering_fields = ["created_at", "valid_from"]

    @extend_schema(request=s.KeyRegisterSerializer, responses={201: s.KeySerializer})
    def create(self, request: Request) -> Response:
        data = _validated(s.KeyRegisterSerializer, request)
        owner = data["owner"] or request.user
        if owner.pk != request.user.pk and Role.ADMIN not in request_roles(request):
            raise PermissionDeniedError("only an admin registers a key for someone else")
        key = services.signing_key_register(
            owner=owner,
            public_key_pem=data["public_key_pem"],
            name=data["name"],
            valid_from=data["valid_from"],
            valid_until=data["valid_until"],
            actor=request.user,
        )
        return Response(s.KeySerializer(key).data, status=201)

    @extend_schema(request=s.KeyRotateSerializer, responses=s.KeySerializer)
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, kid: str) -> Response:
        key = self.get_object()
        data = _validated(s.KeyRotateSerializer, request)
        new = services.key_rotate(
            key=key,
            new_public_key_pem=data["new_public_key_pem"],
            overlap=dt.timedelta(seconds=data["overlap_seconds"]),
            actor=request.user,
        )
        return Response(s.KeySerializer(new).data)

    @extend_schema(request=s.KeyRevokeSerializer, responses=s.KeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, kid: str) -> Response:
        data = _validated(s.KeyRevokeSerializer, request)
        key = services.key_revoke(
            key=self.get_object(),
            reason=data["reason"],
            effective_at=data["effective_at"],
            actor=request.user,
        )
        return Response(s.KeySerializer(key).data)


def _key_file(content: bytes | None) -> bytes | None:
    """The key a key file's content holds; its bytes never reach the message of a refusal."""
    if content is None:
        return None
    try:
        return payload_keys.read_kek_file(content)
    except payload_keys.PayloadKeyError as exc:
        raise PayloadEncryptionError(str(exc)) from None


class PayloadKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Class key-encryption keys of encrypted SUIT payloads (docs/suit.md, "Encrypted
    payloads"). Answers carry kids and facts only: the key bytes stay encrypted at rest."""

    queryset = PayloadEncryptionKey.objects.select_related("created_by")
    serializer_class = s.PayloadKeySerializer
    filterset_class = filters.PayloadKeyFilter
    lookup_field = "kid"
    lookup_value_regex = "[0-9a-f]+"
    ordering_fields = ["created_at"]

    @extend_schema(request=s.PayloadKeyCreateSerializer, responses={201: s.PayloadKeySerializer})
    def create(self, request: Request) -> Response:
        """A new active key for the class, generated or imported from a key file's content;
        the class's active key, if any, is retired."""
        data = _validated(s.PayloadKeyCreateSerializer, request)
        key = services.payload_key_rotate(
            device_class=data["device_class"],
            key=_key_file(data["key_file"]),
            actor=request.user,
        )
        return Response(s.PayloadKeySerializer(key).data, status=201)

    @extend_schema(request=s.PayloadKeyRotateSerializer, responses={201: s.PayloadKeySerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, kid: str) -> Response:
        """Replace this key, if it is still its class's active one (409 otherwise)."""
        key = self.get_object()
        data = _validated(s.PayloadKeyRotateSerializer, request)
        new = services.payload_key_rotate(
            device_class=key.device_class,
            key=_key_file(data["key_file"]),
            replaces=key.kid,
            actor=request.user,
        )
        return Response(s.PayloadKeySerializer(new).data, status=201)


class ImageKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The public keys classes' MCUboot decrypts images with (``imgtool sign --encrypt``)."""

    queryset = ImageEncryptionKey.objects.select_related("created_by")
    serializer_class = s.ImageKeySerializer
    filterset_class = filters.ImageKeyFilter
    lookup_field = "kid"
    lookup_value_regex = "[0-9a-f]+"
    ordering_fields = ["created_at"]

    @extend_schema(request=s.ImageKeySetSerializer, responses={201: s.ImageKeySerializer})
    def create(self, request: Request) -> Response:
        """Set the class's image key; the active one, if another, is retired."""
        data = _validated(s.ImageKeySetSerializer, request)
        key = services.image_encryption_key_set(
            device_class=data["device_class"],
            public_key_pem=data["public_key_pem"],
            actor=request.user,
        )
        return Response(s.ImageKeySerializer(key).data, status=201)


class PolicyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = ReleasePolicy.objects.select_related("updated_by").order_by("kind", "pk")
    serializer_class = s.PolicySerializer
    filterset_class = filters.PolicyFilter

    @extend_schema(request=s.PolicySetSerializer, responses=s.PolicySerializer)
    def create(self, request: Request) -> Response:
        data = _validated(s.PolicySetSerializer, request)
        policy = services.policy_set(
            device_class=data["device_class"],
            kind=data["kind"],
            rules=data["rules"],
            actor=request.user,
        )
        return Response(s.PolicySerializer(policy).data)

    @extend_schema(
        parameters=[s.EffectivePolicyQuerySerializer],
        responses={200: s.EffectivePolicySerializer, 404: s.ErrorSerializer},
        summary="The rules that apply to a device class and where they come from",
        filters=False,
    )
    @action(detail=False, methods=["get"], filterset_class=None, pagination_class=None)
    def effective(self, request: Request) -> Response:
        query = s.EffectivePolicyQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        kind = query.validated_data["kind"]
        device_class = get_object_or_404(
            DeviceClass.objects.all(), pk=query.validated_data["device_class"]
        )
        rules, source = services.policy_for(device_class, kind)
        return Response(
            {"device_class": device_class.pk, "kind": kind, "rules": rules, "source": source}
        )


class RoleViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = RoleAssignment.objects.select_related("user", "granted_by").order_by("pk")
    serializer_class = s.RoleAssignmentSerializer
    filterset_class = filters.RoleAssignmentFilter

    @extend_schema(request=s.RoleGrantSerializer, responses={201: s.RoleAssignmentSerializer})
    def create(self, request: Request) -> Response:
        data = _validated(s.RoleGrantSerializer, request)
        assignment = services.role_grant(user=data["user"], role=data["role"], actor=request.user)
        return Response(s.RoleAssignmentSerializer(assignment).data, status=201)

    @extend_schema(responses={204: None}, summary="Revoke the role (the history row stays)")
    def destroy(self, request: Request, pk: str) -> Response:
        assignment = self.get_object()
        services.role_revoke(user=assignment.user, role=assignment.role, actor=request.user)
        return Response(status=204)


class DelegationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = (
        Delegation.objects.select_related("delegator").prefetch_related("delegatees").order_by("pk")
    )
    serializer_class = s.DelegationSerializer
    filterset_class = filters.DelegationFilter

    @extend_schema(
        request=s.DelegationCreateSerializer,
        responses={201: s.DelegationSerializer},
        summary="Delegate your role (you are the delegator)",
    )
    def create(self, request: Request) -> Response:
        data = _validated(s.DelegationCreateSerializer, request)
        delegation = services.delegation_create(
            delegator=request.user,
            role=data["role"],
            delegatees=data["delegatees"],
            threshold=data["threshold"],
            expires_at=data["expires_at"],
            scope_device_classes=data["scope_device_classes"],
            scope_groups=data["scope_groups"],
            parent=data["parent"],
        )
        return Response(s.DelegationSerializer(delegation).data, status=201)

    @extend_schema(request=s.ReasonSerializer, responses=s.DelegationSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        data = _validated(s.ReasonSerializer, request)
        delegation = services.delegation_revoke(
            delegation=self.get_object(), reason=data["reason"], actor=request.user
        )
        return Response(s.DelegationSerializer(delegation).data)


# --- fleet ---------------------------------------------------------------------------------------
class DeviceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Device.objects.select_related("device_class__vendor")
    serializer_class = s.DeviceSerializer
    filterset_class = filters.DeviceFilter
    lookup_field = "endpoint"
    lookup_value_regex = NAME_REGEX
    ordering_fields = ["endpoint", "last_seen", "firmware_version", "device_class"]

    @extend_schema(responses=s.DeviceDetailSerializer)
    def retrieve(self, request: Request, endpoint: str) -> Response:
        device = self.get_object()
        device.recent_rollouts = list(  # type: ignore[attr-defined]
            Rollout.objects.filter(device=device)
            .select_related("campaign", "device")
            .order_by("-updated_at")[:RECENT_ROLLOUTS]
        )
        return Response(s.DeviceDetailSerializer(device).data)

    @extend_schema(
        request={"text/csv": OpenApiTypes.STR, "multipart/form-data": s.ImportUploadSerializer},
        responses={201: s.ImportResultSerializer},
        summary="Provision devices from CSV: all or nothing, every bad row reported",
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="import",
        url_name="import",
        parser_classes=[CSVParser, parsers.MultiPartParser],
    )
    def import_csv(self, request: Request) -> Response:
        data, name = _uploaded_bytes(request)
        result = fleet_services.devices_import(actor=request.user, data=data, source=name or "api")
        return Response({"created": result.created, "with_psk": result.with_psk}, status=201)

    @extend_schema(
        request=s.TagChangeSerializer,
        responses=s.TagResultSerializer,
        summary="Change one device's tags: add/remove, or replace them all with set",
    )
    @action(detail=True, methods=["post"], parser_classes=[JSONParser], url_name="tags")
    def tags(self, request: Request, endpoint: str) -> Response:
        device = self.get_object()
        data = _validated(s.TagChangeSerializer, request)
        result = fleet_services.device_tags_change(
            actor=request.user, change=_tag_change(data), endpoints=[device.endpoint]
        )
        return Response({"matched": result.matched, "changed": result.changed})


def _tag_change(data: dict[str, Any]) -> TagChange:
    return TagChange.build(add=data["add"], remove=data["remove"], replace=data["set"])


class DeviceTagViewSet(viewsets.GenericViewSet):
    """Tags of many devices at once: an explicit endpoint list or a filter; one audit event."""

    queryset = Device.objects.none()
    serializer_class = s.BulkTagSerializer
    parser_classes = [JSONParser]
    pagination_class = None
    filter_backends: list[Any] = []

    @extend_schema(
        request=s.BulkTagSerializer,
        responses=s.TagResultSerializer,
        summary="Add/remove or replace the tags of the devices listed or filtered",
    )
    def create(self, request: Request) -> Response:
        data = _validated(s.BulkTagSerializer, request)
        result = fleet_services.device_tags_change(
            actor=request.user,
            change=_tag_change(data),
            endpoints=data.get("endpoints"),
            device_filter=DeviceFilter.parse(data["filter"]) if "filter" in data else None,
        )
        return Response({"matched": result.matched, "changed": result.changed})


class DeviceGroupViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Saved device groups (campaign targets: ``target.group``)."""

    queryset = DeviceGroup.objects.select_related("created_by").annotate(
        static_count=Count("devices")
    )
    serializer_class = s.DeviceGroupSerializer
    lookup_field = "name"
    lookup_value_regex = NAME_REGEX
    parser_classes = [JSONParser]
    filter_backends: list[Any] = []

    @extend_schema(request=s.DeviceGroupCreateSerializer, responses={201: s.DeviceGroupSerializer})
    def create(self, request: Request) -> Response:
        data = _validated(s.DeviceGroupCreateSerializer, request)
        group = fleet_services.device_group_create(
            actor=request.user,
            name=data["name"],
            description=data["description"],
            endpoints=data.get("endpoints"),
            device_filter=DeviceFilter.parse(data["filter"]) if "filter" in data else None,
        )
        return Response(s.DeviceGroupSerializer(group).data, status=201)

    @extend_schema(responses={204: None}, summary="Delete (campaigns keep their frozen members)")
    def destroy(self, request: Request, name: str) -> Response:
        fleet_services.device_group_delete(actor=request.user, name=self.get_object().name)
        return Response(status=204)


def _spec_from(request: Request) -> Any:
    data = _validated(s.SpecInputSerializer, request)
    field = "spec" if "spec" in data else "document"
    spec = parse_spec(data[field], source=SPEC_SOURCE)
    # YAML spells NUL as "\0" in a quoted string; the spec is stored as JSON, which on
    # PostgreSQL cannot hold one (the JSON parser refuses a literal one already).
    if contains_nul(spec.to_document()):
        raise ValidationError({field: ["NUL characters are not accepted"]})
    return spec


SPEC_REQUEST = {
    "application/json": s.SpecInputSerializer,
    "application/yaml": OpenApiTypes.STR,
}


class CampaignPlanViewSet(viewsets.GenericViewSet):
    """A plan preview of a spec: validated and counted, nothing written. Its own collection
    (not /campaigns/plan/), so that no campaign name can collide with it."""

    queryset = Campaign.objects.none()
    serializer_class = s.PlanSerializer
    parser_classes = [JSONParser, SpecTextParser]
    pagination_class = None
    filter_backends: list[Any] = []

    @extend_schema(
        request=SPEC_REQUEST, responses=s.PlanSerializer, summary="Validate and plan; no writes"
    )
    def create(self, request: Request) -> Response:
        spec = _spec_from(request)
        return Response(planning.campaign_plan(spec=spec, source=SPEC_SOURCE).as_dict())


class CampaignViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Campaign.objects.select_related(
        "release", "trust_policy", "device_class__vendor", "created_by"
    )
    serializer_class = s.CampaignSerializer
    filterset_class = filters.CampaignFilter
    lookup_field = "name"
    lookup_value_regex = NAME_REGEX
    parser_classes = [JSONParser, SpecTextParser]
    ordering_fields = ["created_at", "name", "status"]

    def _apply(self, request: Request, spec: Any) -> Response:
        campaign, outcome = campaign_services.campaign_apply(
            spec=spec, actor=request.user, source=SPEC_SOURCE
        )
        campaign = self.get_queryset().get(pk=campaign.pk)
        return Response(
            {
                "outcome": outcome,
                "campaign": s.CampaignSerializer(campaign).data,
                "status": selectors.campaign_status(campaign),
            },
            status=201 if outcome == "created" else 200,
        )

    @extend_schema(
        request=SPEC_REQUEST,
        responses={201: s.CampaignApplyResultSerializer, 200: s.CampaignApplyResultSerializer},
        summary="Apply a spec: create the campaign, or revise it (same spec: unchanged)",
    )
    def create(self, request: Request) -> Response:
        return self._apply(request, _spec_from(request))

    @extend_schema(
        request=SPEC_REQUEST,
        responses=s.CampaignApplyResultSerializer,
        summary="Revise a campaign from a new spec (its name must match)",
    )
    def update(self, request: Request, name: str) -> Response:
        campaign = self.get_object()
        spec = _spec_from(request)
        if spec.name != campaign.name:
            raise ValidationError(
                {"name": [f"the spec names {spec.name!r}, not {campaign.name!r}"]}
            )
        return self._apply(request, spec)

    @extend_schema(responses=s.CampaignStatusSerializer)
    @action(detail=True, methods=["get"], url_path="status", url_name="status")
    def status_view(self, request: Request, name: str) -> Response:
        return Response(selectors.campaign_status(self.get_object()))

    @extend_schema(
        responses=s.TimelineEntrySerializer(many=True),
        summary="The campaign's audit events in order (the whole list, not paginated)",
    )
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def timeline(self, request: Request, name: str) -> Response:
        return Response(selectors.campaign_timeline(self.get_object()))

    @extend_schema(responses=s.CampaignRevisionSerializer(many=True))
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def revisions(self, request: Request, name: str) -> Response:
        campaign = self.get_object()
        rows = campaign.revisions.select_related("created_by").order_by("revision")
        return Response(s.CampaignRevisionSerializer(rows, many=True).data)

    def _done(self, campaign: Campaign) -> Response:
        return Response(s.CampaignSerializer(self.get_queryset().get(pk=campaign.pk)).data)

    # The state changes read a JSON body (a reason); only apply/update read YAML specs.
    @extend_schema(request=s.OptionalReasonSerializer, responses=s.CampaignSerializer)
    @action(detail=True, methods=["post"], parser_classes=[JSONParser])
    def pause(self, request: Request, name: str) -> Response:
        data = _validated(s.OptionalReasonSerializer, request)
        return self._done(
            campaign_services.campaign_pause(
                campaign=self.get_object(), actor=request.user, reason=data["reason"]
            )
        )

    @extend_schema(request=s.ResumeSerializer, responses=s.CampaignSerializer)
    @action(detail=True, methods=["post"], parser_classes=[JSONParser])
    def resume(self, request: Request, name: str) -> Response:
        data = _validated(s.ResumeSerializer, request)
        return self._done(
            campaign_services.campaign_resume(
                campaign=self.get_object(), actor=request.user, retry_failed=data["retry_failed"]
            )
        )

    @extend_schema(request=s.ReasonSerializer, responses=s.CampaignSerializer)
    @action(detail=True, methods=["post"], parser_classes=[JSONParser])
    def abort(self, request: Request, name: str) -> Response:
        data = _validated(s.ReasonSerializer, request)
        return self._done(
            campaign_services.campaign_abort(
                campaign=self.get_object(), actor=request.user, reason=data["reason"]
            )
        )

    @extend_schema(request=None, responses=s.CampaignSerializer)
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, name: str) -> Response:
        return self._done(
            campaign_services.campaign_promote(campaign=self.get_object(), actor=request.user)
        )


class RolloutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Per-device rollouts (the campaign page's device table): filter by campaign, stage,
    state, reason, device."""

    queryset = Rollout.objects.select_related("campaign", "device").order_by(
        "campaign", "stage", "pk"
    )
    serializer_class = s.RolloutSerializer
    filterset_class = filters.RolloutFilter
    ordering_fields = ["updated_at", "stage", "state"]


class EmergencyStopViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    queryset = EmergencyStop.objects.select_related("release", "created_by", "lifted_by").order_by(
        "-created_at", "-pk"
    )
    serializer_class = s.EmergencyStopSerializer
    filterset_class = filters.EmergencyStopFilter

    @extend_schema(
        request=s.EmergencyStopCreateSerializer,
        responses={201: s.EmergencyStopSerializer},
        summary="EMERGENCY STOP: halt dispatching (everything, one release or one class)",
    )
    def create(self, request: Request) -> Response:
        data = _validated(s.EmergencyStopCreateSerializer, request)
        stop = campaign_services.emergency_stop(
            actor=request.user,
            reason=data["reason"],
            release=data["release"],
            device_class=data["device_class"],
        )
        return Response(s.EmergencyStopSerializer(stop).data, status=201)

    @extend_schema(request=None, responses=s.EmergencyStopSerializer)
    @action(detail=True, methods=["post"])
    def lift(self, request: Request, pk: str) -> Response:
        stop = campaign_services.emergency_lift(stop=self.get_object(), actor=request.user)
        return Response(s.EmergencyStopSerializer(stop).data)


class RollbackViewSet(viewsets.GenericViewSet):
    """Roll back by rolling forward. The server holds no private keys: ``prepare`` gives the
    parameters, the author signs the manifest offline and imports it (POST /manifests/), creates
    a ``rollback`` release, approvers sign it under the incident policy, then ``launch``."""

    queryset = Release.objects.none()
    serializer_class = s.RollbackPlanSerializer
    pagination_class = None
    filter_backends: list[Any] = []

    @extend_schema(request=s.RollbackPrepareSerializer, responses=s.RollbackPlanSerializer)
    @action(detail=False, methods=["post"])
    def prepare(self, request: Request) -> Response:
        data = _validated(s.RollbackPrepareSerializer, request)
        plan = rollback.rollback_prepare(
            bad_release=data["from_release"], image=data["image_sha256"]
        )
        use_before = data["use_before"] or rollback.default_use_before()
        params = plan.params(use_before=use_before)
        return Response(
            {
                "from_release": plan.bad_release.name,
                "roll_forward_to": plan.version,
                "image": plan.image.sha256,
                "sequence_number": plan.sequence_number,
                "security_counter": plan.security_counter,
                "affected_devices": len(plan.affected_endpoints),
                "affected_endpoints": list(plan.affected_endpoints),
                "manifest_params": {
                    "vendor_id": params.vendor_id,
                    "class_id": params.class_id,
                    "component_id": [part.hex() for part in params.component_id],
                    "payload_format": params.payload_format,
                    "profile": params.profile,
                    "sequence_number": params.sequence_number,
                    "version": params.version,
                    "security_counter": params.security_counter,
                    "image_digest": params.image_digest.hex(),
                    "image_size": params.image_size,
                    "use_before": use_before,
                },
            }
        )

    @extend_schema(
        request=s.RollbackLaunchSerializer,
        responses={201: s.CampaignApplyResultSerializer, 200: s.CampaignApplyResultSerializer},
        summary="Launch the approved rollback release to the devices the bad one reached",
    )
    @action(detail=False, methods=["post"])
    def launch(self, request: Request) -> Response:
        data = _validated(s.RollbackLaunchSerializer, request)
        campaign, outcome, _plan = rollback.rollback_launch(
            rollback_release=data["release"],
            bad_release=data["from_release"],
            actor=request.user,
            name=data["campaign"] or None,
        )
        campaign = Campaign.objects.select_related("release", "device_class__vendor").get(
            pk=campaign.pk
        )
        return Response(
            {
                "outcome": outcome,
                "campaign": s.CampaignSerializer(campaign).data,
                "status": selectors.campaign_status(campaign),
            },
            status=201 if outcome == "created" else 200,
        )


# --- audit ---------------------------------------------------------------------------------------
def _export_record(event: AuditEvent) -> dict[str, Any]:
    """The same record as ``manage.py audit export`` (so exports verify offline alike)."""
    return {
        "seq": event.seq,
        "actor": event.actor,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "details": event.details,
        "created_at": canonical_time(event.created_at),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


EXPORT_CHUNK = 2000  # rows per query while streaming an export (constant memory)


class AuditEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = AuditEvent.objects.all().order_by("seq")
    serializer_class = s.AuditEventSerializer
    filterset_class = filters.AuditEventFilter
    lookup_field = "seq"
    lookup_value_regex = "[0-9]+"
    ordering_fields = ["seq"]

    @extend_schema(
        responses={(200, "application/jsonl"): OpenApiTypes.STR},
        summary="The (filtered) events as JSON lines, in chain order",
    )
    @action(detail=False, methods=["get"], pagination_class=None)
    def export(self, request: Request) -> StreamingHttpResponse:
        queryset = self.filter_queryset(self.get_queryset()).order_by("seq")

        def lines() -> Iterator[str]:
            for event in queryset.iterator(chunk_size=EXPORT_CHUNK):
                yield json.dumps(_export_record(event), sort_keys=True, ensure_ascii=False) + "\n"

        response = StreamingHttpResponse(lines(), content_type="application/jsonl")
        response["Content-Disposition"] = 'attachment; filename="audit.jsonl"'
        return response

    @extend_schema(
        parameters=[OpenApiParameter("anchor", str, description="a head hash you trust")],
        responses=s.ChainVerdictSerializer,
        summary="Verify the whole hash chain now",
        filters=False,
    )
    @action(detail=False, methods=["get"], filterset_class=None, pagination_class=None)
    def verify(self, request: Request) -> Response:
        verdict = audit_verify(anchor=request.query_params.get("anchor") or None)
        return Response(
            {
                "ok": verdict.ok,
                "checked": verdict.checked,
                "head": verdict.head,
                "broken_seq": verdict.broken_seq,
                "problem": verdict.problem,
            }
        )


# --- webhooks ------------------------------------------------------------------------------------
class WebhookViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Webhook.objects.all()
    serializer_class = s.WebhookSerializer

    @extend_schema(responses={201: s.WebhookCreatedSerializer})
    def create(self, request: Request) -> Response:
        data = _validated(s.WebhookSerializer, request)
        hook = webhooks.webhook_create(actor=request.user, **data)
        return Response(s.WebhookCreatedSerializer(hook).data, status=201)

    def update(self, request: Request, pk: str) -> Response:
        return self._update(request, partial=False)

    def partial_update(self, request: Request, pk: str) -> Response:
        return self._update(request, partial=True)

    def _update(self, request: Request, *, partial: bool) -> Response:
        hook = self.get_object()
        data = _validated(s.WebhookSerializer, request, partial=partial, instance=hook)
        hook = webhooks.webhook_update(webhook=hook, actor=request.user, **data)
        return Response(s.WebhookSerializer(hook).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str) -> Response:
        webhooks.webhook_delete(webhook=self.get_object(), actor=request.user)
        return Response(status=204)


class WebhookDeliveryViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    queryset = WebhookDelivery.objects.all()
    serializer_class = s.WebhookDeliverySerializer
    filterset_class = filters.WebhookDeliveryFilter
    ordering_fields = ["created_at"]

    @extend_schema(request=None, responses={202: s.WebhookDeliverySerializer})
    @action(detail=True, methods=["post"], filterset_class=None)
    def resend(self, request: Request, pk: str) -> Response:
        """Send a finished delivery again (409 while it is in flight or its webhook disabled)."""
        delivery = webhooks.webhook_delivery_resend(delivery=self.get_object(), actor=request.user)
        delivery.refresh_from_db()
        return Response(s.WebhookDeliverySerializer(delivery).data, status=202)
