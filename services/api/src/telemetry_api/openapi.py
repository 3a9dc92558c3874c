"""Write ``docs/openapi.json``, or check it for drift.

``python -m telemetry_api.openapi --output docs/openapi.json`` writes the file;
``--check docs/openapi.json`` exits 1 when the file differs from what the code generates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .app import create_app
from .settings import Settings


def render() -> str:
    """The OpenAPI document of an app built with default settings, as stable JSON text."""
    app = create_app(Settings(database_url="postgresql:///openapi"))  # never connected
    document = app.extensions["QUART_SCHEMA"].openapi_provider.schema()
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the OpenAPI document, or check a written one for drift."""
    parser = argparse.ArgumentParser(prog="python -m telemetry_api.openapi")
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


if __name__ == "__main__":
    raise SystemExit(main())
