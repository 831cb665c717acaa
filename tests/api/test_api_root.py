"""``/api/``, where the README sends API users, answers with the API's entry points."""

from __future__ import annotations

from typing import Any


def test_the_api_root_lists_its_entry_points_and_docs(people: dict[str, Any], anon: Any):
    response = people["auditor"].client.get("/api/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["docs"] == "http://testserver/api/docs/"
    assert body["schema"] == "http://testserver/api/schema/"
    assert body["me"] == "http://testserver/api/me/"
    points = body["entry_points"]
    assert points["release-list"] == "http://testserver/api/releases/"
    assert points["campaign-list"] == "http://testserver/api/campaigns/"
    assert points["rollback-launch"] == "http://testserver/api/rollback/launch/"
    # Only paths a client can call as they are: none with a parameter left to fill in.
    assert not any("{" in url or "(?P" in url or "<" in url for url in points.values())
    for url in points.values():
        assert people["auditor"].client.options(url).status_code != 404, url
    assert anon.get("/api/").status_code == 401
