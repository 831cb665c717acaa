"""A device imported from CSV with its DTLS key is a provisioned device like one from ``device
provision``: under provisioned admission the gateway lets it register over DTLS with that key,
and an endpoint the file did not name is still refused."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from django.utils import timezone

from campaigns import fleet_services
from manifests import services
from tests.helpers import personas
from tests.workers.lwm2m import test_dtls_gateway
from tests.workers.lwm2m.test_dtls_gateway import KEY_A, LINKS, dtls_context, register_uri, send
from workers.lwm2m.dtls import dtls_missing
from workers.lwm2m.gateway import GatewayThread

pytestmark = pytest.mark.skipif(dtls_missing() is not None, reason=str(dtls_missing()))

# The DTLS gateway tests' fixture: a gateway on a free port whose PSKs come from the database.
start_gateway = test_dtls_gateway.start_gateway


def test_an_imported_device_registers_over_dtls_with_its_key(
    start_gateway: Callable[..., GatewayThread], django_user_model: Any
) -> None:
    root = personas.superuser(django_user_model)
    ops = django_user_model.objects.create_user(username="ops", password=None)
    services.role_grant(
        user=ops, role="fleet_operator", actor=root, now=timezone.now() - dt.timedelta(hours=1)
    )
    fleet_services.devices_import(
        actor=ops, data=f"endpoint,psk_identity,psk_key\ndtls-imp,dtls-imp,{KEY_A.hex()}\n"
    )
    thread = start_gateway(admission="provisioned")
    base = thread.gateway.config.dtls_base_uri

    async def register(endpoint: str) -> aiocoap.Message:
        context = await dtls_context(base, endpoint, KEY_A)
        try:
            return await send(context, Code.POST, register_uri(base, endpoint), LINKS)
        finally:
            await context.shutdown()

    assert thread.call(register("dtls-imp")).code == Code.CREATED
    assert thread.gateway.by_endpoint["dtls-imp"].identity == "dtls-imp"
    with pytest.raises(aiocoap.error.Error):  # no key for it: the handshake fails
        thread.call(register("not-imported"))
