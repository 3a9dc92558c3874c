"""Swagger UI's JavaScript and CSS, served from the swagger-ui-py wheel so /docs works offline."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Final

from quart import Blueprint, Response, send_from_directory
from quart_schema import hide
from werkzeug.exceptions import NotFound


def _static_dir() -> Path:
    # find_spec locates the package without importing it (its import pulls in web handlers).
    spec = find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("swagger-ui-py is not installed")
    return Path(spec.origin).parent / "static"


STATIC_DIR: Final = _static_dir()
FILES: Final = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})
JS_URL: Final = "/docs/assets/swagger-ui-bundle.js"
CSS_URL: Final = "/docs/assets/swagger-ui.css"

bp = Blueprint("assets", __name__)


@bp.get("/docs/assets/<name>")
@hide
async def asset(name: str) -> Response:
    """One of the Swagger UI files."""
    if name not in FILES:
        raise NotFound()
    response = await send_from_directory(STATIC_DIR, name)
    response.cache_control.max_age = 86400
    return response
