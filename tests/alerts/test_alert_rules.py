"""The alert rules: promtool checks and unit tests, one firing test per alert, the chart's copy.

helm/telemetry/files/alerts.yaml is the one source of the rules; tests/alerts/rules.test.yaml
unit-tests it with promtool (Debian's `prometheus` package; `.ci/run` installs it), and the
chart's PrometheusRule renders it with the release's job names and namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "telemetry" / "files" / "alerts.yaml"
TESTS = ROOT / "tests" / "alerts" / "rules.test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
CHART = ROOT / "helm" / "telemetry"
SERVICES = ("broker", "streamer", "collector", "api")

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def _helm() -> str | None:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    if found := shutil.which("helm"):
        return found
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tools = Path(os.environ.get("TELEMETRY_TOOLS_DIR", cache / "telemetry-tools" / "bin"))
    return str(tools / "helm") if (tools / "helm").exists() else None


HELM = _helm()
needs_helm = pytest.mark.skipif(
    HELM is None, reason="helm is not installed (task helm:lint installs it into the tool cache)"
)


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_every_alert_is_labelled_and_explained():
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        # The chart leaves out the rules of a disabled service by this label; the two rules
        # about every service derive it from the series instead.
        assert "component" in rule["labels"] or '"component"' in rule["expr"], rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule.get("for"), f"{rule['alert']}: a blip must not page"


def test_every_alert_fires_in_a_unit_test_and_stays_quiet_in_another():
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    firing = {
        c["alertname"] for t in cases for c in t.get("alert_rule_test", []) if c.get("exp_alerts")
    }
    quiet = {
        c["alertname"]
        for t in cases
        for c in t.get("alert_rule_test", [])
        if not c.get("exp_alerts")
    }
    names = {r["alert"] for r in rules()}
    assert names - firing == set(), "alerts without a test in which they fire"
    assert names - quiet == set(), "alerts without a case in which they must stay quiet"


def test_every_alert_has_a_section_in_the_operations_guide():
    text = OPERATIONS.read_text()
    headings = set(re.findall(r"^#### (Telemetry\w+)$", text, flags=re.M))
    assert {r["alert"] for r in rules()} - headings == set()


@needs_promtool
def test_promtool_checks_the_rules():
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


@needs_promtool
def test_promtool_unit_tests_pass():
    out = subprocess.run(
        [PROMTOOL, "test", "rules", str(TESTS)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _render(tmp_path: Path, *sets: str) -> list[dict]:
    assert HELM is not None
    args = [HELM, "template", "prod", str(CHART), "--namespace", "gpu"]
    args += ["--set", "metrics.prometheusRule.enabled=true", *(f"--set={s}" for s in sets)]
    out = subprocess.run(
        [*args, "--show-only", "templates/prometheusrule.yaml"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = yaml.safe_load(out.stdout)
    assert doc["kind"] == "PrometheusRule"
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


@needs_helm
def test_the_chart_scopes_every_job_selector_to_the_release(tmp_path):
    rendered = _render(tmp_path)
    assert {r["alert"] for r in rendered} == {r["alert"] for r in rules()}
    for rule in rendered:
        for selector in re.findall(r"\{[^}]*job=~?\"[^\"]*\"[^}]*\}", rule["expr"]):
            assert 'namespace="gpu"' in selector and '"prod-telemetry-' in selector, selector
    down = next(r for r in rendered if r["alert"] == "TelemetryBrokerDown")
    assert down["expr"] == 'absent(up{namespace="gpu", job="prod-telemetry-broker"} == 1)'
    if PROMTOOL is not None:
        out = subprocess.run(
            [PROMTOOL, "check", "rules", str(tmp_path / "rendered.yaml")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr


@needs_helm
def test_the_chart_leaves_out_disabled_services_and_alerts(tmp_path):
    rendered = _render(
        tmp_path,
        "streamer.enabled=false",
        "metrics.prometheusRule.disabled.TelemetryMaintenanceLate=true",
        "metrics.prometheusRule.alertLabels.team=gpu",
        "metrics.prometheusRule.runbookBaseUrl=https://ops.example/operations.md",
    )
    names = {r["alert"] for r in rendered}
    streamer = {r["alert"] for r in rules() if r["labels"].get("component") == "streamer"}
    assert streamer and not names & streamer
    assert "TelemetryMaintenanceLate" not in names
    assert "TelemetryDatabaseUnreachable" in names  # not a service of the chart: always there
    for rule in rendered:
        assert rule["labels"]["team"] == "gpu"
        assert rule["annotations"]["runbook_url"] == (
            f"https://ops.example/operations.md#{rule['alert'].lower()}"
        )
