#!/bin/sh
# Make Podman's Docker-compatible Engine API answer on a unix socket (run as root).
#
# Idempotent and quick when all is in place: installs podman, runc and debootstrap from
# Debian's packages when missing, configures the runc runtime and explicit ulimits (see
# docs/containers.md for why), and starts `podman system service` unless the socket answers.
#
#   scripts/setup-podman.sh            # socket: /run/infrax-podman.sock
#   INFRAX_PODMAN_SOCKET=/run/x.sock scripts/setup-podman.sh
set -eu

SOCKET="${INFRAX_PODMAN_SOCKET:-/run/infrax-podman.sock}"
LOG="${INFRAX_PODMAN_LOG:-/var/log/infrax-podman.log}"
CONF=/etc/containers/containers.conf

say() { echo "setup-podman: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "must run as root (installs packages, writes $CONF)"
    exit 1
fi

answers() {
    curl -sf --max-time 2 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1
}

missing=""
for tool in podman runc debootstrap curl; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    say "installing$missing"
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    # With recommends: they bring catatonit (the init of `init=True`) and the network stack.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# runc, not crun: crun refuses hybrid cgroups. Without explicit nofile/nproc ulimits,
# runc fails with "setrlimit RLIMIT_NOFILE: Operation not permitted" as root here.
if ! grep -qs '^runtime = "runc"' "$CONF" || ! grep -qs '^default_ulimits' "$CONF"; then
    say "writing $CONF"
    mkdir -p /etc/containers
    cat > "$CONF" <<'CONF'
# Written by infrax scripts/setup-podman.sh
[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
CONF
fi

if answers; then
    exit 0
fi

say "starting podman system service on $SOCKET (log: $LOG)"
rm -f "$SOCKET"
# setsid + nohup: the service must outlive the shell (and the test session) that started it.
# Started from /: conmon leaves files (an `oom` marker, say) in its working directory.
(cd / && setsid nohup podman system service --time=0 "unix://$SOCKET" >>"$LOG" 2>&1 </dev/null &)

tries=0
until answers; do
    tries=$((tries + 1))
    if [ "$tries" -ge 150 ]; then
        say "the Engine API did not answer on $SOCKET within 30 s; last lines of $LOG:"
        tail -n 20 "$LOG" >&2 || true
        exit 1
    fi
    sleep 0.2
done
say "Engine API answers on unix://$SOCKET"
