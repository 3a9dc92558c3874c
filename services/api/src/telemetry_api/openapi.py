"""Write ``docs/openapi.json``, or check it for drift.

``python -m telemetry_api.openapi --output docs/openapi.json`` writes the file;
``--check docs/openapi.json`` exits 1 when the file differs from what the code generates.
"""

from __future__ import annotations

from pydantic import SecretStr
from telemetry_kit import document_main, render_document

from .app import create_app
from .settings import Settings


def render() -> str:
    """The OpenAPI document of an app built with default settings, as stable JSON text."""
    # model_construct: the defaults, whatever API_* variables this shell has; never connected.
    settings = Settings.model_construct(database_url=SecretStr("postgresql:///openapi"))
    return render_document(create_app(settings))


def main(argv: list[str] | None = None) -> int:
    """Write the OpenAPI document, or check a written one for drift."""
    return document_main(render, argv, "python -m telemetry_api.openapi")


if __name__ == "__main__":
    raise SystemExit(main())
