#!/usr/bin/env bash
# Headless Chromium (Debian package) for the HTML report test; installs it if missing.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
echo "ensure-chromium.sh: installing chromium (Debian package)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
