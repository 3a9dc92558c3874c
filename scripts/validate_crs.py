"""Validate rendered custom resources against the CRD schemas in scripts/schemas/.

kubernetes-validate knows the built-in kinds only. This checks the chart's custom resources (the
KEDA ScaledObject, the Prometheus Operator's ServiceMonitor and PrometheusRule) against the
``openAPIV3Schema`` of their CustomResourceDefinitions, strictly: a field the schema does not
declare fails, as ``kubectl apply`` (strict field validation) would refuse it. A custom kind with
no schema here fails too. CEL rules (``x-kubernetes-validations``) cannot be evaluated offline;
they are counted and named in the summary.

Usage: python scripts/validate_crs.py [--require KIND ...] RENDERED.yaml ...
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import yaml
from jsonschema import Draft4Validator

SCHEMAS: Final = Path(__file__).parent / "schemas"
# API groups kubernetes-validate covers (the built-in kinds).
BUILTIN_GROUP: Final = re.compile(r"^(|apps|batch|policy|autoscaling|[a-z0-9.-]*\.k8s\.io)$")
DNS1123_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# What the API server checks in every object's metadata that a CRD schema leaves out.
OBJECT_META: Final = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a structural schema in which objects refuse undeclared fields."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties", "definitions"):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties", "not"):
            walk(node.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            walk(node.get(key, []))

    walk(out)
    return out


def cel_rules(node: Any) -> Iterator[str]:
    """Every CEL rule (x-kubernetes-validations) in a schema."""
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            yield str(rule.get("rule", "")).strip()
        for child in node.values():
            yield from cel_rules(child)
    elif isinstance(node, list):
        for child in node:
            yield from cel_rules(child)


class Schemas:
    """The CRD schemas of scripts/schemas/, by (apiVersion, kind)."""

    def __init__(self, directory: Path) -> None:
        self.validators: dict[tuple[str, str], Draft4Validator] = {}
        self.rules: dict[str, list[str]] = {}
        for path in sorted(directory.glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text()):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                kind = spec["names"]["kind"]
                for version in spec["versions"]:
                    schema = dict(version["schema"]["openAPIV3Schema"])
                    schema["properties"] = dict(schema["properties"], metadata=OBJECT_META)
                    schema["required"] = sorted({*schema.get("required", []), "metadata"})
                    api_version = f"{spec['group']}/{version['name']}"
                    self.validators[(api_version, kind)] = Draft4Validator(strict(schema))
                    self.rules[kind] = list(cel_rules(schema))

    def errors(self, doc: dict[str, Any]) -> list[str]:
        """Why ``doc`` is invalid (empty when it is valid or a built-in kind)."""
        api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
        group = api_version.rpartition("/")[0]
        validator = self.validators.get((api_version, kind))
        if validator is None:
            if BUILTIN_GROUP.match(group):
                return []
            return [f"no schema for {kind} {api_version} in {SCHEMAS}"]
        return [
            f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        ]


def main(argv: list[str] | None = None) -> int:
    """Validate every custom resource of the given files; exit 1 on any error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="rendered manifests (multi-document)")
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="KIND",
        help="fail unless at least one KIND was validated (repeatable)",
    )
    args = parser.parse_args(argv)
    schemas = Schemas(SCHEMAS)
    checked: Counter[str] = Counter()
    failed = 0
    for path in args.files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or not doc:
                continue
            kind = str(doc.get("kind"))
            name = doc.get("metadata", {}).get("name", "?")
            problems = schemas.errors(doc)
            for problem in problems:
                print(f"FAIL {path.name}: {kind}/{name}: {problem}", file=sys.stderr)
            failed += bool(problems)
            if (str(doc.get("apiVersion")), kind) in schemas.validators:
                checked[kind] += 1
    for kind in args.require:
        if not checked[kind]:
            print(f"FAIL no {kind} was rendered, so none was validated", file=sys.stderr)
            failed += 1
    summary = ", ".join(f"{kind} {n}" for kind, n in sorted(checked.items())) or "none"
    print(f"custom resources checked against their CRD schemas: {summary}")
    for kind in sorted(checked):
        for rule in schemas.rules.get(kind, []):
            print(f"  not evaluated offline ({kind} CEL rule): {rule}")
    if failed:
        print(f"{failed} custom resource(s) invalid", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
