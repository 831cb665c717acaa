"""The OpenAPI schema states what the server answers, errors included.

drf-spectacular documents the success response of each operation; every operation here can
also fail, and always with the one JSON error body of ``api.errors``. ``AutoSchema`` adds
those responses from what the operation takes: any operation may answer 401 (no or bad
credentials) and 403 (the role matrix, or a service's own check); one with a path parameter
404; one with a body or query parameters 400; one with a body 415 (a media type it does not
read); a write 409 (exists already / wrong state). 405 is not listed per operation: an
operation in the schema is a method the path has, so only methods the schema does not list
answer 405 (with the same error body). Statuses particular to one operation (413 on image
upload, 409 on the released envelope) are declared on its view.

Filter parameters given with an empty value are refused (``api.filters``), so a string
filter documents ``minLength: 1``.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

ERROR_DESCRIPTIONS = {
    "400": "Bad input: validation (`invalid`, with `errors`), a malformed upload or spec.",
    "401": "No or bad credentials (`auth.not_authenticated`, `auth.failed`).",
    "403": "Refused by the role matrix (`api.forbidden`) or a service's own rule.",
    "404": "No such object (`not_found`).",
    "409": "Exists already, or in the wrong state for this (the service's code).",
    "413": "Upload over the size limit.",
    "415": "A request body of a media type this operation does not read.",
}


class AutoSchema(openapi.AutoSchema):
    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any
    ) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        parameters = operation.get("parameters", [])
        self._require_filter_values(parameters)
        has_body = "requestBody" in operation
        codes = {"401", "403"}
        if has_body or any(p["in"] == "query" for p in parameters):
            codes.add("400")
        if has_body:
            codes.add("415")
        if any(p["in"] == "path" for p in parameters):
            codes.add("404")
        if self.method in WRITE_METHODS:
            codes.add("409")
        responses = operation["responses"]
        error = self._error_response()
        for code in sorted(codes):
            responses.setdefault(code, {**error, "description": ERROR_DESCRIPTIONS[code]})
        return operation

    def _error_response(self) -> dict[str, Any]:
        from api.serializers import ErrorSerializer

        component = self.resolve_serializer(ErrorSerializer, "response")
        return {"content": {"application/json": {"schema": component.ref}}}

    def _require_filter_values(self, parameters: list[dict[str, Any]]) -> None:
        filterset = getattr(self.view, "filterset_class", None)
        names = set(filterset.base_filters) if filterset is not None else set()
        for parameter in parameters:
            schema = parameter.get("schema", {})
            if (
                parameter["in"] == "query"
                and parameter["name"] in names
                and schema.get("type") == "string"
                and "enum" not in schema
            ):
                schema["minLength"] = 1
