#!/usr/bin/env bash
# Start or stop a local Unleash server (pinned npm unleash-server) on PostgreSQL 15,
# both bound to 127.0.0.1, for tests and local use.
#
#   scripts/unleash.sh start    install what is missing, start both, wait for /health,
#                               print the UNLEASH_* variables to use
#   scripts/unleash.sh stop     stop what start started (by PID)
#   scripts/unleash.sh env      print the UNLEASH_* variables
#
# State lives in .cache/unleash (gitignored): the npm install, and a folder per server
# port (run-<port>: PostgreSQL's data, the server's PID and logs), so servers on other
# ports (another checkout's, another run's) are never this one's. Ports: UNLEASH_PORT
# (default 44242) and UNLEASH_PG_PORT (default 55432). With UNLEASH_PRIVATE=1, `stop`
# also deletes the run folder (scripts/with-unleash.sh sets it for a run of its own).
set -euo pipefail

UNLEASH_VERSION=7.5.1
root="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"  # also when run through a symlink
state="$root/.cache/unleash"
export UNLEASH_PORT="${UNLEASH_PORT:-44242}"
export UNLEASH_PG_PORT="${UNLEASH_PG_PORT:-55432}"
export UNLEASH_PG_USER=unleash UNLEASH_PG_PASSWORD=unleash UNLEASH_PG_DATABASE=unleash
export UNLEASH_ADMIN_TOKEN="${UNLEASH_ADMIN_TOKEN:-*:*.task-shim-local-admin}"
export UNLEASH_API_TOKEN="${UNLEASH_API_TOKEN:-*:development.task-shim-local-client}"
url="http://127.0.0.1:$UNLEASH_PORT"
run="$state/run-$UNLEASH_PORT"
pgdata="$run/pg"

say() { echo "unleash.sh: $*" >&2; }

print_env() {
  echo "export UNLEASH_URL=$url/api"
  echo "export UNLEASH_API_TOKEN='$UNLEASH_API_TOKEN'"
  echo "export UNLEASH_ADMIN_TOKEN='$UNLEASH_ADMIN_TOKEN'"
  echo "export UNLEASH_ENVIRONMENT=development"
}

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
  done
  return 1
}

install_postgres() {
  pg_bin >/dev/null && return
  say "installing PostgreSQL 15 (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
}

install_unleash() {
  if [ -f "$state/node_modules/unleash-server/package.json" ] &&
     grep -q "\"version\": \"$UNLEASH_VERSION\"" "$state/node_modules/unleash-server/package.json"; then
    return
  fi
  say "installing unleash-server@$UNLEASH_VERSION from npm (about a minute)"
  mkdir -p "$state"
  echo '{"name":"task-shim-unleash","private":true,"type":"module"}' > "$state/package.json"
  (cd "$state" && npm install --no-audit --no-fund --loglevel=error "unleash-server@$UNLEASH_VERSION" >/dev/null)
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

start_postgres() {
  local bin; bin="$(pg_bin)"
  mkdir -p "$run"
  if [ "$(id -u)" = 0 ]; then chown postgres "$run"; fi
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    as_postgres "'$bin/initdb' -D '$pgdata' -U postgres -A trust >/dev/null"
  fi
  if ! as_postgres "'$bin/pg_ctl' -D '$pgdata' status" >/dev/null 2>&1; then
    wait_port_free "$UNLEASH_PG_PORT"
    as_postgres "'$bin/pg_ctl' -D '$pgdata' -l '$run/pg.log' -w -t 30 start \
      -o \"-h 127.0.0.1 -p $UNLEASH_PG_PORT -k '$run' -c fsync=off -c synchronous_commit=off -c full_page_writes=off\"" >/dev/null
  fi
  as_postgres "'$bin/psql' -h 127.0.0.1 -p $UNLEASH_PG_PORT -U postgres -tAc \"SELECT 1 FROM pg_roles WHERE rolname='unleash'\"" | grep -q 1 ||
    as_postgres "'$bin/psql' -h 127.0.0.1 -p $UNLEASH_PG_PORT -U postgres -qc \"CREATE ROLE unleash LOGIN PASSWORD 'unleash'\""
  as_postgres "'$bin/psql' -h 127.0.0.1 -p $UNLEASH_PG_PORT -U postgres -tAc \"SELECT 1 FROM pg_database WHERE datname='unleash'\"" | grep -q 1 ||
    as_postgres "'$bin/psql' -h 127.0.0.1 -p $UNLEASH_PG_PORT -U postgres -qc \"CREATE DATABASE unleash OWNER unleash\""
}

# A server of an earlier run (another checkout's, or one still shutting down) may hold
# the port for a few seconds: wait for it rather than fail on "address already in use".
wait_port_free() {
  local i
  for i in $(seq 1 75); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
    sleep 0.2
  done
  say "port $1 on 127.0.0.1 is still in use after 15 s: stop what holds it (ss -ltnp), or set UNLEASH_PG_PORT"
  exit 1
}

healthy() { curl -fsS "$url/health" 2>/dev/null | grep -q GOOD; }

start_unleash() {
  if healthy; then return; fi
  # Copied whole, then renamed: a server of another run may be starting from it.
  cp "$root/scripts/unleash-server.mjs" "$run/server.mjs.new"
  mv -f "$run/server.mjs.new" "$state/server.mjs"
  # No subshell around the background job: it would wait for node while holding our
  # stdout, and `eval "$(unleash.sh start)"` would never return.
  cd "$state"
  nohup node server.mjs >"$run/unleash.log" 2>&1 </dev/null &
  echo $! >"$run/unleash.pid"
  cd "$root"
  local i
  for i in $(seq 1 300); do
    healthy && return
    if ! kill -0 "$(cat "$run/unleash.pid")" 2>/dev/null; then
      say "unleash-server exited; last lines of $run/unleash.log:"; tail -20 "$run/unleash.log" >&2; exit 1
    fi
    sleep 0.2
  done
  say "unleash-server did not answer $url/health within 60 s"; exit 1
}

stop_all() {
  if [ -f "$run/unleash.pid" ]; then
    local pid i; pid="$(cat "$run/unleash.pid")"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$run/unleash.pid"
  fi
  local bin; bin="$(pg_bin 2>/dev/null)" || return 0
  if [ -f "$pgdata/postmaster.pid" ]; then
    as_postgres "'$bin/pg_ctl' -D '$pgdata' -m fast -w stop" >/dev/null 2>&1 || true
  fi
  # A run's own folder goes with it, once its PostgreSQL is down (never under it); its
  # logs are kept in last-run/ for whoever reads why a run failed.
  if [ "${UNLEASH_PRIVATE:-}" = 1 ] && [ ! -f "$pgdata/postmaster.pid" ]; then
    mkdir -p "$state/last-run" && cp -f "$run"/*.log "$state/last-run/" 2>/dev/null || true
    rm -rf "$run"
  fi
}

case "${1:-}" in
  start)
    if ! healthy; then install_postgres; install_unleash; start_postgres; start_unleash; fi
    say "Unleash is up at $url (UI and Admin API; sign in with an admin token)"
    print_env ;;
  stop) stop_all ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
