"""telemetry-kit: what every service shares (serving, logging, control routes, problem errors)."""

from .app import base_app
from .contract import (
    ContractProvider,
    Problem,
    document_main,
    empty_response,
    links,
    path_parameter,
    problems,
    render_document,
)
from .control import ReadinessCheck, control_blueprint
from .errors import PROBLEM_JSON, APIError, problem, register_error_handlers
from .httpmetrics import HttpMetrics, http_metrics, instrument
from .logs import JsonFormatter, TextFormatter, logging_config
from .serve import (
    draining,
    exit_code,
    hypercorn_config,
    run,
    serve_until_stopped,
    stop,
    wait_or_stop,
)
from .settings import ServiceSettings

__all__ = [
    "PROBLEM_JSON",
    "APIError",
    "ContractProvider",
    "HttpMetrics",
    "JsonFormatter",
    "Problem",
    "ReadinessCheck",
    "ServiceSettings",
    "TextFormatter",
    "base_app",
    "control_blueprint",
    "document_main",
    "draining",
    "empty_response",
    "exit_code",
    "http_metrics",
    "hypercorn_config",
    "instrument",
    "links",
    "logging_config",
    "path_parameter",
    "problem",
    "problems",
    "register_error_handlers",
    "render_document",
    "run",
    "serve_until_stopped",
    "stop",
    "wait_or_stop",
]
