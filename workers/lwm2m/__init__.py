"""LwM2M server side (gateway), its pure codecs and Object 5 logic, and the device simulator.

Pure modules (no Django, no I/O): ``errors``, ``linkformat``, ``tlv``, ``senml``, ``content``,
``object5``, ``blocks``. The gateway and simulator are thin asyncio shells around them
(the simulated devices check a release with ``manifests.device_rules``, the SUIT rules a device
applies); Django is only touched through ``campaigns.device_services`` and ``workers.tasks``.
"""
