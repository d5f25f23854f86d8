#!/usr/bin/env bash
# Run a command with a local Unleash server up and UNLEASH_* set; stop the server
# afterwards unless it was already running.
#
# Without UNLEASH_PORT, the run gets a server of its own on two free ports (and its own
# PostgreSQL data, deleted afterwards): a server on the usual ports may belong to another
# checkout or another run, which would stop it under this one. With UNLEASH_PORT set, a
# server already answering there is used and left running.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -z "${UNLEASH_PORT:-}" ]; then
  ports="$(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')" || { echo "with-unleash.sh: python3 could not pick two free ports" >&2; exit 1; }
  read -r UNLEASH_PORT UNLEASH_PG_PORT <<<"$ports"
  export UNLEASH_PORT UNLEASH_PG_PORT UNLEASH_PRIVATE=1
fi
was_up=no
curl -fsS "http://127.0.0.1:$UNLEASH_PORT/health" 2>/dev/null | grep -q GOOD && was_up=yes
# Set before the start: a start that fails half-way (PostgreSQL up, the server not) is
# stopped too. `stop` stops only what is there.
if [ "$was_up" = no ]; then trap '"$here/unleash.sh" stop' EXIT; fi
# Not `eval "$(... start)"`: eval of a failed substitution succeeds, and the tests would
# then skip every Unleash test instead of the run failing.
env_lines="$("$here/unleash.sh" start)"
eval "$env_lines"
"$@"
