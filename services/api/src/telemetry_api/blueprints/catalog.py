"""``/api/v1/metrics``: the metric catalog."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint
from quart_schema import operation_id, tag_blueprint, validate_response
from telemetry_kit import problems
from telemetry_model import METRICS

from ..spec import UNAUTHORIZED

bp = Blueprint("catalog", __name__, url_prefix="/api/v1/metrics")
tag_blueprint(bp, ["metrics"])


class MetricInfo(BaseModel):
    """A metric the pipeline stores."""

    name: str = Field(examples=["DCGM_FI_DEV_POWER_USAGE"])
    unit: str = Field(examples=["W"])
    description: str = Field(examples=["Power draw"])


class MetricList(BaseModel):
    """Every metric, in catalog order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "name": "DCGM_FI_DEV_GPU_UTIL",
                            "unit": "%",
                            "description": "GPU utilization",
                        },
                        {
                            "name": "DCGM_FI_DEV_POWER_USAGE",
                            "unit": "W",
                            "description": "Power draw",
                        },
                    ]
                }
            ]
        }
    )

    items: list[MetricInfo]


_CATALOG = MetricList(
    items=[MetricInfo(name=m.name, unit=m.unit, description=m.description) for m in METRICS]
)


@bp.get("", strict_slashes=False)
@operation_id("listMetrics")
@validate_response(MetricList)
@problems(UNAUTHORIZED)
async def list_metrics() -> MetricList:
    """List the metric catalog: each metric's name, unit and description."""
    return _CATALOG
