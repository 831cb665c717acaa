"""Errors of the LwM2M layer, as a small tree with stable codes.

Every decoder raises only subclasses of :class:`LwM2MError` on bad input (the fuzz tests hold it to
that), so the gateway can map any refusal to a CoAP error code and keep serving.
"""

from __future__ import annotations

from typing import Any


class LwM2MError(Exception):
    """Base of every refusal by the LwM2M codecs, state machine and gateway."""

    code = "lwm2m.error"
    #: CoAP response code name (aiocoap.numbers.codes.Code attribute) used when this reaches a peer.
    coap_code = "BAD_REQUEST"


class LinkFormatError(LwM2MError):
    """The registration payload is not valid CoRE link format (RFC 6690) for LwM2M."""

    code = "lwm2m.link_format"


class TLVError(LwM2MError):
    """The payload is not valid OMA LwM2M TLV."""

    code = "lwm2m.tlv"


class SenMLError(LwM2MError):
    """The payload is not valid SenML JSON/CBOR as LwM2M uses it."""

    code = "lwm2m.senml"


class ContentFormatError(LwM2MError):
    """The content format is unsupported for the operation, or the value does not fit it."""

    code = "lwm2m.content_format"
    coap_code = "UNSUPPORTED_CONTENT_FORMAT"


class PathError(LwM2MError):
    """An LwM2M path (/object/instance/resource[/ri]) is malformed or out of range."""

    code = "lwm2m.path"


class RegistrationError(LwM2MError):
    """A registration request has missing or invalid parameters."""

    code = "lwm2m.registration"


class UnknownRegistrationError(LwM2MError):
    """The registration id is not held by this gateway (expired, or never existed)."""

    code = "lwm2m.unknown_registration"
    coap_code = "NOT_FOUND"


class PayloadTooLargeError(LwM2MError):
    """The request payload exceeds the gateway's limit."""

    code = "lwm2m.payload_too_large"
    coap_code = "REQUEST_ENTITY_TOO_LARGE"


class Object5TransitionError(LwM2MError):
    """A Firmware Update (Object 5) transition the LwM2M 1.1 state machine does not allow."""

    code = "lwm2m.object5_transition"
    coap_code = "METHOD_NOT_ALLOWED"


class DeviceOperationError(LwM2MError):
    """A device operation (read/write/execute) failed; ``permanent`` says whether trying the same
    again can help (False: a passing cause). ``result`` is what the operation got as far as
    (an update's phase and the device's Update Result), reported with the failure."""

    code = "lwm2m.device_operation"

    def __init__(
        self, message: str, *, permanent: bool = False, result: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.result = result


class DeviceTimeoutError(DeviceOperationError):
    """The device did not answer a request in time (transient: busy, asleep, a lossy link)."""

    code = "lwm2m.device_timeout"


class DeviceBusyError(DeviceOperationError):
    """The device is in the middle of another firmware update and cannot take this one now."""

    code = "lwm2m.device_busy"


class UpdateFailedError(DeviceOperationError):
    """A firmware update the gateway drove ended without success; ``result`` holds the phase it
    reached and the Update Result the device reported."""

    code = "lwm2m.fw_update_failed"


class UpdateCancelledError(UpdateFailedError):
    """The update was cancelled (empty Package URI) while the gateway followed it."""

    code = "lwm2m.fw_update_cancelled"


class UpdateTimedOutError(DeviceOperationError):
    """The update did not end within its timeout (transient: the device may just be slow)."""

    code = "lwm2m.fw_update_timed_out"


class DeviceUnreachableError(DeviceOperationError):
    """An update attempt ended before anything reached the device's update state machine: the
    device did not answer in time, or is not held here now (transient: the campaign waits for
    it and sends the update again, without counting a failure)."""

    code = "lwm2m.device_unreachable"


class DeviceNotConnectedError(DeviceOperationError):
    """The target device holds no registration on this gateway (transient: it may come back)."""

    code = "lwm2m.device_not_connected"


class UnsupportedProtocolError(DeviceOperationError):
    """The package URI scheme is not in the device's /5/0/8 Firmware Update Protocol Support."""

    code = "lwm2m.unsupported_protocol"


class NoSupportedDeliveryError(UnsupportedProtocolError):
    """The device offers no delivery the gateway can use: pull (/5/0/9 0 or 2) with none of the
    schemes it lists in /5/0/8 that this gateway serves, and no push (/5/0/9 1 or 2)."""

    code = "lwm2m.no_supported_delivery"


class UpdateNeverStartedError(UpdateFailedError):
    """The device took the Package URI (or the pushed package) and its State never moved: it
    accepts the writes and does nothing with them (permanent: the same again does the same)."""

    code = "lwm2m.fw_update_never_started"


class PushRefusedError(DeviceOperationError):
    """The device refused the package pushed to /5/0/0 (a 4.xx answer to the Block1 write)
    without an Update Result saying why."""

    code = "lwm2m.push_refused"


class FirmwareUnavailableError(DeviceOperationError):
    """The gateway cannot serve the file the update needs (not published, or a delivery form
    this installation does not have)."""

    code = "lwm2m.firmware_unavailable"
