#!/usr/bin/env bash
# A Debian bookworm base image (python3 3.11, python3-venv) made from Debian's packages with
# mmdebstrap and imported as localhost/deb-base:bookworm: no registry can be reached here, so no
# base image can be pulled. Elsewhere, the Containerfile's default public base is used instead.
# Reused when the image exists already (VCE_REBUILD_BASE=1 rebuilds it).
set -euo pipefail
BASE=${VCE_BASE_IMAGE:-localhost/deb-base:bookworm}
HERE=$(cd "$(dirname "$0")" && pwd)
bash "$HERE/podman-setup.sh"
if [[ ${VCE_REBUILD_BASE:-0} != 1 ]] && podman image exists "$BASE"; then
  echo "base: $BASE exists (VCE_REBUILD_BASE=1 to rebuild)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s)
echo "base: mmdebstrap bookworm (minbase + python3, python3-venv, ca-certificates) -> $tmp/rootfs.tar"
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
  --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
  bookworm "$tmp/rootfs.tar"
podman import --change 'CMD ["/bin/bash"]' "$tmp/rootfs.tar" "$BASE" >/dev/null
echo "base: imported $BASE in $(( $(date +%s) - t0 )) s ($(podman image inspect --format '{{.Size}}' "$BASE") bytes)"
