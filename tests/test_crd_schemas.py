"""scripts/validate_crs.py: the chart's custom resources against the vendored CRD schemas."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.validate_crs import SCHEMAS, Schemas, main

SCALED_OBJECT: dict[str, Any] = {
    "apiVersion": "keda.sh/v1alpha1",
    "kind": "ScaledObject",
    "metadata": {"name": "telemetry-collector", "labels": {"app.kubernetes.io/name": "telemetry"}},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "c"},
        "minReplicaCount": 1,
        "maxReplicaCount": 10,
        "pollingInterval": 15,
        "fallback": {"failureThreshold": 3, "replicas": 2},
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}
            }
        },
        "triggers": [
            {
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": "http://prometheus:9090",
                    "query": "sum(telemetry_broker_consumer_lag_records)",
                    "threshold": "50000",
                },
                "authenticationRef": {"name": "prometheus-auth"},
            }
        ],
    },
}
SERVICE_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "ServiceMonitor",
    "metadata": {"name": "telemetry-api"},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/component": "api"}},
        "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
    },
}
PROMETHEUS_RULE: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "telemetry"},
    "spec": {
        "groups": [
            {
                "name": "telemetry",
                "rules": [
                    {
                        "alert": "TelemetryLagGrowing",
                        "expr": "deriv(sum(telemetry_broker_consumer_lag_records)[10m:]) > 0",
                        "for": "15m",
                        "labels": {"severity": "warning"},
                    }
                ],
            }
        ]
    },
}


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return Schemas(SCHEMAS)


def broken(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``value`` at the dotted ``path`` (``...`` deletes the key)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize("doc", [SCALED_OBJECT, SERVICE_MONITOR, PROMETHEUS_RULE])
def test_valid_resources_pass(schemas: Schemas, doc):
    assert schemas.errors(doc) == []


@pytest.mark.parametrize(
    ("doc", "path", "value", "message"),
    [
        # KEDA's trigger metadata is a map of strings: an unquoted number is refused.
        (SCALED_OBJECT, "spec.triggers.0.metadata.threshold", 50000, "is not of type 'string'"),
        (SCALED_OBJECT, "spec.minReplicas", 1, "Additional properties"),
        (SCALED_OBJECT, "spec.scaleTargetRef.name", ..., "'name' is a required property"),
        (SCALED_OBJECT, "spec.triggers", [], "should be non-empty"),
        (SCALED_OBJECT, "spec.fallback.replicas", "2", "is not of type 'integer'"),
        (SCALED_OBJECT, "metadata.name", "Collector_1", "does not match"),
        (SCALED_OBJECT, "metadata", ..., "'metadata' is a required property"),
        (SERVICE_MONITOR, "spec.endpoints.0.intervall", "30s", "Additional properties"),
        (SERVICE_MONITOR, "spec.selector", ..., "'selector' is a required property"),
        (PROMETHEUS_RULE, "spec.groups.0.rules.0.for", "15 minutes", "does not match"),
    ],
)
def test_invalid_resources_fail(schemas: Schemas, doc, path, value, message):
    errors = schemas.errors(broken(doc, path, value))
    assert errors and any(message in e for e in errors), errors


def test_unknown_custom_kinds_fail_and_builtin_kinds_are_left_to_kubernetes_validate(schemas):
    assert schemas.errors(broken(SCALED_OBJECT, "apiVersion", "keda.sh/v2")) == [
        f"no schema for ScaledObject keda.sh/v2 in {SCHEMAS}"
    ]
    assert schemas.errors({"apiVersion": "apps/v1", "kind": "Deployment", "spec": 1}) == []
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "x": 1}
    assert schemas.errors(policy) == []


def test_main_requires_the_kinds_asked_for(tmp_path: Path, capsys):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all([SERVICE_MONITOR, {"kind": "Service"}]))
    assert main(["--require", "ServiceMonitor", str(rendered)]) == 0
    assert main(["--require", "ScaledObject", str(rendered)]) == 1
    assert "no ScaledObject was rendered" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken(SERVICE_MONITOR, "spec.endpoints.0.port", 8000)))
    assert main([str(bad)]) == 1
    assert "ServiceMonitor/telemetry-api: spec.endpoints.0.port" in capsys.readouterr().err
