#!/usr/bin/env bash
# Run a command with a local Unleash server up and UNLEASH_* set; stop the server
# afterwards unless it was already running.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
was_up=no
curl -fsS "http://127.0.0.1:${UNLEASH_PORT:-44242}/health" 2>/dev/null | grep -q GOOD && was_up=yes
# Not `eval "$(... start)"`: eval of a failed substitution succeeds, and the tests would
# then skip every Unleash test instead of the run failing.
env_lines="$("$here/unleash.sh" start)"
eval "$env_lines"
if [ "$was_up" = no ]; then trap '"$here/unleash.sh" stop' EXIT; fi
"$@"
