#!/usr/bin/env bash
# Make podman usable on this kind of machine (idempotent; run as root):
#   - installs podman, runc and mmdebstrap when missing (Debian packages);
#   - writes /etc/containers/containers.conf so that plain `podman run IMAGE CMD`, `podman build`
#     and podman's Docker-compatible API (kfp's DockerRunner) work here: runc (crun refuses this
#     machine's hybrid cgroups), cgroupfs, the host network, ulimits within the hard limits.
# A containers.conf written by someone else is left alone when it already has these settings,
# and refused (exit 1, with what is missing) when it has not.
set -euo pipefail
CONF=${VCE_CONTAINERS_CONF:-/etc/containers/containers.conf}
MARK="# written by vce scripts/image/podman-setup.sh"

install_missing() {
  local missing=()
  for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if ((${#missing[@]})); then
    echo "podman-setup: installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  fi
}

want_conf() {
  cat <<CONF_EOF
$MARK
[containers]
netns = "host"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF_EOF
}

write_conf() {
  mkdir -p "$(dirname "$CONF")"
  if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    local need=('netns = "host"' 'runtime = "runc"' 'cgroup_manager = "cgroupfs"' 'default_ulimits')
    local miss=()
    for s in "${need[@]}"; do grep -qF "$s" "$CONF" || miss+=("$s"); done
    if ((${#miss[@]})); then
      echo "podman-setup: $CONF exists (not ours) and lacks: ${miss[*]}; add them or remove the file" >&2
      exit 1
    fi
    echo "podman-setup: $CONF (not ours) already has the settings"
    return
  fi
  if [[ -f $CONF ]] && diff -q <(want_conf) "$CONF" >/dev/null; then
    echo "podman-setup: $CONF up to date"
  else
    want_conf >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
    echo "podman-setup: wrote $CONF"
  fi
}

install_missing
write_conf
