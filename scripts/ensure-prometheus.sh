#!/usr/bin/env bash
# Prometheus (Debian package) for the fleet tests, which start and stop their own server
# on 127.0.0.1 (tests/promkit.py); installs it if missing. The package's own service is
# never started: there is no init system to start it, and the tests need none.
set -euo pipefail
command -v prometheus >/dev/null 2>&1 && exit 0
echo "ensure-prometheus.sh: installing prometheus (Debian package)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
