#!/bin/sh
# The version-control tools a task user runs for its checkout: where infrax is root, task code and
# its agent run as users of their own, who cannot run what lives in root's own folders (a pyenv
# under /root, the .venv's `hg` built on it). Debian's git and Mercurial are theirs to run.
#
# Idempotent and quick when they are there already. Root installs them with apt; anyone else runs
# task code as itself (run_as: self) and needs nothing.
set -eu

say() { echo "setup-task-tools: $*" >&2; }

missing=""
[ -x /usr/bin/git ] || missing="$missing git"
[ -x /usr/bin/hg ] || missing="$missing mercurial"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    exit 0
fi
say "installing$missing (Debian's packages)"
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
