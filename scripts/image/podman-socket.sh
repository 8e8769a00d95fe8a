#!/usr/bin/env bash
# podman's Docker-compatible API on a unix socket, for kfp's DockerRunner (`vce run --runner docker`):
#   eval "$(bash scripts/image/podman-socket.sh)"     # starts it if needed, prints export DOCKER_HOST=...
#   bash scripts/image/podman-socket.sh --stop        # stops the service this script started
# The service runs until stopped (--time=0); its pid is in ${SOCK%.sock}.pid, its log in ${SOCK%.sock}.log.
set -euo pipefail
SOCK=${VCE_PODMAN_SOCKET:-/run/vce-podman.sock}
PIDF=${SOCK%.sock}.pid
LOG=${SOCK%.sock}.log
HERE=$(cd "$(dirname "$0")" && pwd)

alive() { [[ -f $PIDF ]] && kill -0 "$(cat "$PIDF")" 2>/dev/null; }
ready() { podman --url "unix://$SOCK" version >/dev/null 2>&1; }

if [[ ${1:-} == --stop ]]; then
  if alive; then kill "$(cat "$PIDF")" && echo "podman-socket: stopped pid $(cat "$PIDF")" >&2; fi
  rm -f "$PIDF"
  exit 0
fi
bash "$HERE/podman-setup.sh" >&2
if ! (alive && ready); then
  rm -f "$SOCK"
  nohup podman system service --time=0 "unix://$SOCK" >"$LOG" 2>&1 &
  echo $! >"$PIDF"
  for _ in $(seq 100); do ready && break; sleep 0.1; done
  ready || { echo "podman-socket: the service did not come up; its log: $LOG" >&2; cat "$LOG" >&2; exit 1; }
  echo "podman-socket: serving the Docker API on unix://$SOCK (pid $(cat "$PIDF"))" >&2
fi
echo "export DOCKER_HOST=unix://$SOCK"
