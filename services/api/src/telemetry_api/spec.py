"""The API's OpenAPI contract: telemetry-kit's provider with this API's path parameters."""

from __future__ import annotations

from typing import Any, Final

from quart_schema import Tag
from telemetry_kit import ContractProvider

EXAMPLE_GPU: Final = "GPU-5fd4f087-86f3-7a43-b711-4771313afc50"

TAGS: Final = [
    Tag(name="gpus", description="The GPUs that have telemetry, and their latest state."),
    Tag(name="telemetry", description="One GPU's datapoints over time, raw or bucketed."),
    Tag(name="metrics", description="The metric catalog: names, units, meanings."),
]
# The optional API_TOKEN: no security ({}) or a bearer token, as the deployment says.
SECURITY_SCHEMES: Final[dict[str, Any]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
    }
}
SECURITY: Final[list[dict[str, list[str]]]] = [{}, {"bearer": []}]

# Problem codes every data route may answer besides its own.
UNAUTHORIZED: Final = {401: ["UNAUTHORIZED"]}
UNAVAILABLE: Final = {503: ["DATABASE_UNAVAILABLE", "DATABASE_BUSY", "QUERY_TIMEOUT"]}
GPU_NOT_FOUND: Final = {404: ["GPU_NOT_FOUND"]}


class ApiOpenAPIProvider(ContractProvider):
    """The contract provider, knowing the API's one path parameter."""

    path_parameters = {
        "gpu_id": {
            "description": "The GPU's uuid, as listed by listGpus.",
            "schema": {"type": "string", "examples": [EXAMPLE_GPU]},
            "example": EXAMPLE_GPU,
        }
    }
