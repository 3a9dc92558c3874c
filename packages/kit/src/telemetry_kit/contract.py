"""The OpenAPI contract of a service: quart-schema's document, shaped for client generators.

quart-schema builds the document from the routes; ``ContractProvider`` adjusts it in one
place, so every service's spec reads the same way to a generator (openapi-python-client) and
to a tester (schemathesis):

- each operation's ``operationId`` is the one given with quart-schema's ``@operation_id``,
  verbatim (``listGpus``, not ``get_list_all``); an operation without one is an error;
- every request and response body is a named component (``#/components/schemas/GpuPage``),
  never an inline copy, so a generator makes one model per body, named after it;
- every error response is ``application/problem+json`` and refers to the one ``Problem``
  component, with an example per error code (``@problems``) and its documented headers
  (``WWW-Authenticate`` on 401, ``Retry-After`` on 429 and 503);
- bodiless answers (``204``) are declared with ``@empty_response``, and OpenAPI links from a
  response to the operations that take its values with ``@links`` (schemathesis follows them
  in its stateful phase);
- path parameters take their schema, description and example from the provider's
  ``path_parameters`` (a route may override them with ``@path_parameter``), and query
  parameters carry their first schema example as ``example``;
- a request body is required unless an empty one (``{}``) is valid.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field
from quart import Quart
from quart_schema import OpenAPIProvider
from quart_schema.openapi import QUART_SCHEMA_OPERATION_ID_ATTRIBUTE
from quart_schema.validation import QUART_SCHEMA_RESPONSE_ATTRIBUTE
from werkzeug.routing import Rule
from werkzeug.routing.converters import BaseConverter

from .errors import PROBLEM_JSON

PROBLEMS_ATTRIBUTE: Final = "_telemetry_problem_codes"
EMPTY_ATTRIBUTE: Final = "_telemetry_empty_responses"
LINKS_ATTRIBUTE: Final = "_telemetry_links"
PARAMETERS_ATTRIBUTE: Final = "_telemetry_path_parameters"
JSON: Final = "application/json"
PROBLEM_REF: Final = {"$ref": "#/components/schemas/Problem"}

# Headers an error response carries by status (kit's APIError and the services set them).
_PROBLEM_HEADERS: Final[Mapping[int, Mapping[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The authentication scheme: Bearer.",
            "required": True,
            "schema": {"type": "string", "examples": ['Bearer realm="api"']},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$", "examples": ["1"]},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$", "examples": ["5"]},
        }
    },
}


class Problem(BaseModel):
    """An error: RFC 9457 problem details with a stable machine-readable ``code``.

    Some problems carry more members (a limit, the schema errors of a request), named in
    their description.
    """

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field("about:blank", description="Always about:blank: see code.")
    title: str = Field(description="The HTTP status phrase.", examples=["Not Found"])
    status: int = Field(description="The HTTP status code.", examples=[404])
    code: str = Field(
        description="Stable SCREAMING_SNAKE_CASE error code.", examples=["GPU_NOT_FOUND"]
    )
    detail: str | None = Field(None, description="What was wrong, for humans.")


def problems[F: Callable[..., Any]](codes: Mapping[int, Sequence[str]]) -> Callable[[F], F]:
    """Declare the route's error responses: status -> the problem codes it may answer with."""

    def decorator(func: F) -> F:
        responses = dict(getattr(func, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {}))
        declared = dict(getattr(func, PROBLEMS_ATTRIBUTE, {}))
        for status, names in codes.items():
            if status < 400:
                raise ValueError(f"a problem is an error status, not {status}")
            responses[status] = (Problem, None)
            declared[status] = tuple(names)
        setattr(func, QUART_SCHEMA_RESPONSE_ATTRIBUTE, responses)
        setattr(func, PROBLEMS_ATTRIBUTE, declared)
        return func

    return decorator


def empty_response[F: Callable[..., Any]](status: int, description: str) -> Callable[[F], F]:
    """Declare a response without a body (such as 204) and what it means."""

    def decorator(func: F) -> F:
        empty = dict(getattr(func, EMPTY_ATTRIBUTE, {}))
        empty[status] = description
        setattr(func, EMPTY_ATTRIBUTE, empty)
        return func

    return decorator


def links[F: Callable[..., Any]](
    status: int, targets: Mapping[str, Mapping[str, str]]
) -> Callable[[F], F]:
    """Link the route's ``status`` response to other operations: operationId -> its
    parameters as runtime expressions (``$response.body#/name``, ``$request.path.topic``)."""

    def decorator(func: F) -> F:
        declared = dict(getattr(func, LINKS_ATTRIBUTE, {}))
        declared[status] = {
            target: {"operationId": target, "parameters": dict(parameters)}
            for target, parameters in targets.items()
        }
        setattr(func, LINKS_ATTRIBUTE, declared)
        return func

    return decorator


def path_parameter[F: Callable[..., Any]](name: str, **fields: Any) -> Callable[[F], F]:
    """Override the documented ``name`` path parameter of this route (its schema, say)."""

    def decorator(func: F) -> F:
        declared = dict(getattr(func, PARAMETERS_ATTRIBUTE, {}))
        declared[name] = fields
        setattr(func, PARAMETERS_ATTRIBUTE, declared)
        return func

    return decorator


def _problem_example(status: int, code: str) -> dict[str, Any]:
    return {
        "summary": code,
        "value": {
            "type": "about:blank",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "code": code,
        },
    }


class ContractProvider(OpenAPIProvider):
    """quart-schema's provider, producing the contract described in this module's docstring.

    Subclasses (or ``QuartSchema(openapi_provider_class=...)`` users) set ``path_parameters``:
    name -> the parameter's ``schema`` and optional ``description`` and ``example``.
    """

    path_parameters: Mapping[str, Mapping[str, Any]] = {}

    def operation_id(self, method: str, path: str, func: Callable[..., Any]) -> str | None:
        found = getattr(func, QUART_SCHEMA_OPERATION_ID_ATTRIBUTE, None)
        if found is None:
            raise LookupError(f"{method} {path} has no @operation_id")
        return str(found)

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        known = self.path_parameters.get(name)
        if known is not None:
            parameter.update(known)
        return parameter

    def build_querystring_parameters(
        self, model: type[Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parameters, components = super().build_querystring_parameters(model)
        for parameter in parameters:
            schema = parameter["schema"]
            # An absent parameter is not a null one: drop pydantic's "default": null.
            if schema.get("default", ...) is None:
                del schema["default"]
            schema.pop("title", None)
            if schema.get("examples"):
                parameter["example"] = schema["examples"][0]
        return parameters, components

    def build_request_body(
        self, model: type[Any], source: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        body, components = super().build_request_body(model, source)
        for media in body["content"].values():
            media["schema"] = _lift(media, components)
        # Required unless an empty body is a valid one (``{}``: every field has a default).
        try:
            model.model_validate({})
        except ValueError:
            body["required"] = True
        return body, components

    def build_response_object(
        self, model: type[Any], headers_model: type[Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        response, components = super().build_response_object(model, headers_model)
        media = response["content"].pop(JSON)
        if model is Problem:
            components["Problem"] = media["schema"]
            response["content"][PROBLEM_JSON] = {"schema": dict(PROBLEM_REF)}
        else:
            media["schema"] = _lift(media, components)
            response["content"][JSON] = media
        return response, components

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        codes: Mapping[int, Sequence[str]] = getattr(func, PROBLEMS_ATTRIBUTE, {})
        empty: Mapping[int, str] = getattr(func, EMPTY_ATTRIBUTE, {})
        linked: Mapping[int, Mapping[str, Any]] = getattr(func, LINKS_ATTRIBUTE, {})
        overrides: Mapping[str, Mapping[str, Any]] = getattr(func, PARAMETERS_ATTRIBUTE, {})
        for item in paths.values():
            for operation in item.values():
                operation["parameters"] = [
                    {**p, **overrides.get(p["name"], {})} if p["in"] == "path" else p
                    for p in operation["parameters"]
                ]
                responses = dict(operation["responses"])
                for status, description in empty.items():
                    responses[status] = {"description": description}
                for status, response in list(responses.items()):
                    if int(status) >= 400:
                        responses[status] = _problem_response(int(status), codes.get(int(status)))
                    elif not response.get("description"):
                        response["description"] = HTTPStatus(int(status)).phrase
                for status, targets in linked.items():
                    responses[status] = {**responses[status], "links": dict(targets)}
                operation["responses"] = {str(k): v for k, v in sorted(responses.items())}
                if not operation.get("description"):
                    operation.pop("description", None)
                else:
                    operation["description"] = inspect.cleandoc(operation["description"])
        return paths, components


def _lift(media: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Move a body's inline schema into ``components`` under its title; return the reference.

    Its first example becomes the media type's ``example``.
    """
    schema = dict(media["schema"])
    if "$ref" in schema:
        return schema
    name = schema.get("title")
    if not name:
        raise ValueError(f"a body schema needs a title to be named: {schema}")
    examples = schema.pop("examples", None)
    if examples:
        media["example"] = examples[0]
    previous = components.get(name)
    if previous is not None and previous != schema:
        raise ValueError(f"two different bodies are named {name}")
    components[name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


def _problem_response(status: int, codes: Sequence[str] | None) -> dict[str, Any]:
    phrase = HTTPStatus(status).phrase
    media: dict[str, Any] = {"schema": dict(PROBLEM_REF)}
    if codes:
        media["examples"] = {code: _problem_example(status, code) for code in codes}
    response: dict[str, Any] = {
        "description": f"{phrase}: {', '.join(codes)}." if codes else phrase,
        "content": {PROBLEM_JSON: media},
    }
    if status in _PROBLEM_HEADERS:
        response["headers"] = {k: dict(v) for k, v in _PROBLEM_HEADERS[status].items()}
    return response


def render_document(app: Quart) -> str:
    """The OpenAPI document of ``app`` as stable JSON text (what is committed in docs/)."""
    document = app.extensions["QUART_SCHEMA"].openapi_provider.schema()
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def document_main(render: Callable[[], str], argv: Sequence[str] | None, prog: str) -> int:
    """``prog --output FILE`` writes the document ``render`` gives, ``--check FILE`` exits 1
    when the file differs from it (run ``task openapi``); with neither, print it."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--output", "-o", type=Path, help="write the document here")
    parser.add_argument("--check", type=Path, help="exit 1 if this file is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check is not None:
        current = args.check.read_text("utf-8") if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is out of date: run `task openapi`", file=sys.stderr)
            return 1
        print(f"{args.check} is up to date")
        return 0
    if args.output is not None:
        args.output.write_text(text, "utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0
