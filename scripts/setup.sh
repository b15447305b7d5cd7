#!/usr/bin/env bash
# One setup for a fresh machine, used by `make run`, `make test` and `.ci/run`.
#
#   scripts/setup.sh run    what the main job needs: bubblewrap (the sandbox and the bwrap agent
#                           backend), a Docker engine and the local agent image (agent containers)
#   scripts/setup.sh test   all of that, plus Node.js/npm (the JavaScript client test) and the
#                           npm packages the tests use (examples/js-agent, tools/buf)
#
# As root with apt-get it installs what is missing (Debian packages bubblewrap, docker.io, nodejs,
# npm) and starts dockerd (--iptables=false --bridge=none --storage-driver=vfs). Where it cannot, it
# prints what is missing and the exact command that adds it, and goes on: the server then refuses
# user code (no sandbox) and the launcher uses the strongest backend it finds.
# Exit status is 0 unless a step that could run failed outright (an apt-get install that ran and
# failed, an image build that failed): a missing tool that cannot be installed here is a warning.
set -uo pipefail
cd "$(dirname "$0")/.."

purpose=${1:-test}
case "$purpose" in run|test) ;; *) echo "usage: scripts/setup.sh run|test" >&2; exit 2 ;; esac
PY=${PY:-.venv/bin/python}
status=0
missing=()

say() { echo "setup: $*"; }
warn() { echo "setup: WARNING: $*" >&2; }

need_cmd() {  # need_cmd COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need_cmd bwrap bubblewrap
need_cmd dockerd docker.io
need_cmd docker docker.io
if [ "$purpose" = test ]; then
  need_cmd node nodejs
  need_cmd npm npm
  need_cmd chromium chromium   # tests/test_dashboard.py: headless screenshots and live updates
  [ -n "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" ] || missing+=(postgresql)  # tests/pg.py: a real PostgreSQL server
fi
# unique
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null 2>&1 || warn "apt-get update failed"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/tmp/ecology-apt.log 2>&1; then
      warn "apt-get install ${missing[*]} failed; last lines of /tmp/ecology-apt.log:"
      tail -n 5 /tmp/ecology-apt.log >&2
      status=1
    fi
  else
    warn "missing: ${missing[*]}. Install them with:  sudo apt-get install ${missing[*]}"
  fi
fi

# bubblewrap must not only exist but work (user namespaces may be disabled).
if command -v bwrap >/dev/null 2>&1; then
  if bwrap --unshare-all --ro-bind / / true >/dev/null 2>&1; then
    say "sandbox: bubblewrap works"
  else
    warn "bubblewrap is installed but cannot create namespaces here (try: sysctl -w kernel.unprivileged_userns_clone=1); user code will be refused"
  fi
else
  warn "no bubblewrap: the server will refuse user code (SANDBOX_UNAVAILABLE). Install it with:  sudo apt-get install bubblewrap"
fi

# Docker engine and the local agent image (no registry is needed).
if scripts/ensure_docker.sh; then
  if ! "$PY" -m agent_runtime.launcher.image ensure; then
    warn "could not build the agent image: run  $PY -m agent_runtime.launcher.image ensure  to see why"
    status=1
  fi
else
  warn "no Docker engine answers: agents run in bubblewrap instead. As root:  apt-get install docker.io && scripts/ensure_docker.sh"
fi

# The dashboard's chart library (server/dashboard/static, served by `ecology run`) is needed to
# run, the others only to test.
npm_dirs=(server/dashboard/static)
[ "$purpose" = test ] && npm_dirs+=(examples/js-agent tools/buf)
if ! command -v npm >/dev/null 2>&1; then
  [ "$purpose" = run ] && warn "npm is missing: the dashboard shows no charts. As root:  apt-get install npm  then rerun"
else
  for dir in "${npm_dirs[@]}"; do
    [ -f "$dir/package-lock.json" ] || continue
    stamp="$dir/node_modules/.ecology-lock"
    if [ -f "$stamp" ] && cmp -s "$dir/package-lock.json" "$stamp"; then
      continue
    fi
    say "npm ci in $dir"
    if (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
      cp "$dir/package-lock.json" "$stamp"
    else
      warn "npm ci failed in $dir"
      status=1
    fi
  done
fi
exit $status
