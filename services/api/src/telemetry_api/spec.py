"""quart-schema's OpenAPI provider, adjusted: errors are ``application/problem+json``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from quart_schema import OpenAPIProvider
from telemetry_kit import PROBLEM_JSON

from .problems import Problem


class ApiOpenAPIProvider(OpenAPIProvider):
    """quart-schema's provider, with error responses typed ``application/problem+json``."""

    def build_response_object(
        self, model: type[Any], headers_model: type[Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        response, components = super().build_response_object(model, headers_model)
        if model is Problem:
            response["content"] = {PROBLEM_JSON: response["content"]["application/json"]}
        return response, components

    def build_querystring_parameters(
        self, model: type[Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parameters, components = super().build_querystring_parameters(model)
        for parameter in parameters:
            # An absent parameter is not a null one: drop pydantic's "default": null.
            if parameter["schema"].get("default", ...) is None:
                del parameter["schema"]["default"]
        return parameters, components

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        for path in document["paths"].values():
            for operation in path.values():
                responses = {str(k): v for k, v in sorted(operation["responses"].items())}
                for status, response in responses.items():
                    if int(status) >= 400:
                        response["description"] = HTTPStatus(int(status)).phrase
                operation["responses"] = responses
        return document
