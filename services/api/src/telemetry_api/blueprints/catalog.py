"""``/api/v1/metrics``: the metric catalog."""

from __future__ import annotations

from pydantic import BaseModel, Field
from quart import Blueprint
from quart_schema import tag_blueprint, validate_response
from telemetry_model import METRICS

bp = Blueprint("catalog", __name__, url_prefix="/api/v1/metrics")
tag_blueprint(bp, ["Metrics"])


class MetricInfo(BaseModel):
    """A metric the pipeline stores."""

    name: str = Field(examples=["DCGM_FI_DEV_POWER_USAGE"])
    unit: str = Field(examples=["W"])
    description: str = Field(examples=["Power draw"])


class MetricList(BaseModel):
    """Every metric, in catalog order."""

    items: list[MetricInfo]


_CATALOG = MetricList(
    items=[MetricInfo(name=m.name, unit=m.unit, description=m.description) for m in METRICS]
)


@bp.get("", strict_slashes=False)
@validate_response(MetricList)
async def list_metrics() -> MetricList:
    """List the metric catalog: each metric's name, unit and description."""
    return _CATALOG
