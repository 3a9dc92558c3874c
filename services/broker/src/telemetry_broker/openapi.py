"""Write ``docs/broker-openapi.json``, or check it for drift.

``python -m telemetry_broker.openapi --output docs/broker-openapi.json`` writes the file;
``--check docs/broker-openapi.json`` exits 1 when the file differs from what the code
generates. The document of a broker with default settings: a running broker serves its own at
``/openapi.json``, with its limits (``BROKER_MAX_FETCH_WAIT``, ``BROKER_MAX_NACK_DELAY``) and,
when ``BROKER_TOKEN`` is set, the bearer token required.
"""

from __future__ import annotations

from telemetry_kit import document_main, render_document

from .app import create_app
from .settings import BrokerSettings


def render() -> str:
    """The OpenAPI document of a broker built with default settings, as stable JSON text."""
    # model_construct: the defaults, whatever BROKER_* variables this shell has.
    return render_document(create_app(BrokerSettings.model_construct()))


def main(argv: list[str] | None = None) -> int:
    """Write the OpenAPI document, or check a written one for drift."""
    return document_main(render, argv, "python -m telemetry_broker.openapi")


if __name__ == "__main__":
    raise SystemExit(main())
