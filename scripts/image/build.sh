#!/usr/bin/env bash
# Build the VCE image here (`make image`): podman configured (podman-setup.sh), the Debian base
# made with mmdebstrap (base.sh), then the Containerfile with this machine's pip configuration
# bind-mounted read-only for the build only (pip_build_config.py). Prints the build time and the
# image size, and writes them to build/image.json.
#   VCE_IMAGE   image to build (default: the one the components name, components/__init__.py)
#   PY          the Python whose pip configuration the build uses (default python3)
#   VCE_BASE_IMAGE  base (default localhost/deb-base:bookworm, made here)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PY:-python3}
# the components' image ($VCE_IMAGE, else components.DEFAULT_IMAGE): components/__init__.py imports only os
IMAGE=$("$PY" -c 'import components; print(components.VCE_IMAGE)')
BASE=${VCE_BASE_IMAGE:-localhost/deb-base:bookworm}
[[ -n $IMAGE ]] || { echo "build: no VCE_IMAGE in components/__init__.py" >&2; exit 1; }
export VCE_BASE_IMAGE=$BASE
bash scripts/image/base.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" scripts/image/pip_build_config.py "$tmp"
mapfile -t pipargs <"$tmp/podman-args"
echo "build: $IMAGE from $BASE"
t0=$(date +%s)
# TORCH_INDEX_URL empty: the pinned CPU torch wheel lies in this machine's find-links folder.
podman build --pull=never --network=host --layers \
  --build-arg "BASE_IMAGE=$BASE" --build-arg "TORCH_INDEX_URL=" "${pipargs[@]}" \
  -f Containerfile -t "$IMAGE" .
secs=$(( $(date +%s) - t0 ))
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
mkdir -p build
printf '{"image": "%s", "base": "%s", "build_seconds": %d, "size_bytes": %d}\n' "$IMAGE" "$BASE" "$secs" "$size" | tee build/image.json
echo "build: $IMAGE built in ${secs} s, $((size / 1024 / 1024)) MiB"
