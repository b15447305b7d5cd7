#!/usr/bin/env bash
# Make sure a Docker engine answers on the default socket.
#
# If `docker info` already works, do nothing. Otherwise, as root, install Debian's docker.io
# (if missing) and start dockerd in the background with settings that work in a container-less
# CI VM without iptables or a bridge: --iptables=false --bridge=none --storage-driver=vfs.
# Agent containers use network_mode=none, so no bridge is needed.
#
# Exit status: 0 when an engine answers, 1 otherwise (callers decide: the docker tests then SKIP).
set -uo pipefail

LOG=${ECOLOGY_DOCKERD_LOG:-/tmp/ecology-dockerd.log}
WAIT=${ECOLOGY_DOCKERD_WAIT:-60}

engine_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

if engine_up; then
  echo "ensure_docker: engine already running"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "ensure_docker: no engine answers and not root; cannot start dockerd" >&2
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "ensure_docker: installing docker.io"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1 || true
  fi
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure_docker: dockerd not available" >&2
  exit 1
fi

# A stale pid file from a dead daemon blocks a new one.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  rm -f /var/run/docker.pid
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "ensure_docker: starting dockerd (log: $LOG)"
  nohup dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
    >"$LOG" 2>&1 </dev/null &
  disown || true
fi

for _ in $(seq 1 "$WAIT"); do
  if engine_up; then
    echo "ensure_docker: engine up ($(docker info --format '{{.ServerVersion}} {{.Driver}}' 2>/dev/null))"
    exit 0
  fi
  sleep 1
done
echo "ensure_docker: dockerd did not answer within ${WAIT}s; last log lines:" >&2
tail -n 20 "$LOG" >&2 || true
exit 1
