#!/bin/sh
# Debian's chromium for the dashboard's browser tests (Playwright drives it; it downloads no browser).
#
# Idempotent and quick when it is there already. Root installs it with apt; anyone else is told
# what to run, and the browser tests then skip (or fail, under CI).
set -eu

say() { echo "setup-browser: $*" >&2; }

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "chromium is missing: run 'apt-get install chromium' as root (the browser tests need it)"
    exit 0
fi
say "installing chromium (Debian's package)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
say "$(chromium --version 2>/dev/null || echo 'chromium installed')"
