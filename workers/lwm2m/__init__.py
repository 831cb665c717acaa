"""LwM2M server side (gateway), its pure codecs and Object 5 logic, and the device simulator.

Pure modules (no Django, no I/O): ``errors``, ``linkformat``, ``tlv``, ``senml``, ``content``,
``object5``, ``device_checks``, ``blocks``. The gateway and simulator are thin asyncio shells around
them; Django is only touched through ``campaigns.device_services`` and ``workers.tasks``.
"""
