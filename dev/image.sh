#!/usr/bin/env bash
# Build the relay's container image with whichever engine runs here (podman, else docker).
#
#   dev/image.sh build [TAG]   # base image if needed, then the Dockerfile (default tag klaviyo-relay:dev)
#   dev/image.sh base          # only make sure the Dockerfile's base image is there
#   dev/image.sh env           # ENGINE=... and CONTAINERS_CONF=... lines for `eval` (tests use it)
#
# Where no registry of base images is reachable, the base (the Dockerfile's PYTHON_IMAGE,
# python:3.11-slim-bookworm) is made locally: a minimal Debian bookworm from Debian's mirror
# (debootstrap), Debian's python3 with venv and pip, and this host's CA bundle (so the build's
# pip trusts what the host trusts). It is imported under the upstream name, labelled as a
# stand-in, and kept in the engine's storage: a second run costs nothing.
#
# For podman, the configuration this machine needs is written to a file of our own
# ($CACHE/containers.conf, used through CONTAINERS_CONF) rather than assumed or put in /etc:
#   - runtime = "runc" where the cgroup layout is v1/hybrid (crun refuses it);
#   - default_ulimits from `ulimit -H`, since rootful podman's defaults (nofile 1048576,
#     nproc 4194304) can exceed the hard limits and every container would fail to start.
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE="${KLAVIYO_RELAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/klaviyo-relay}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The Dockerfile's default, so `docker build .` elsewhere and this script agree.
BASE_IMAGE="${PYTHON_IMAGE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)}"
SUITE=bookworm

say() { echo "image: $*" >&2; }

# The hard limits a container may ask for. nproc: conmon's children get at most
# kernel.pid_max (seen here: 32768 below `ulimit -Hu`), and runc fails on anything higher.
NOFILE="$(ulimit -Hn)"
NPROC="$(ulimit -Hu)"
PID_MAX="$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo "$NPROC")"
[[ "$NPROC" == unlimited || "$NPROC" -gt "$PID_MAX" ]] && NPROC="$PID_MAX"
[[ "$NOFILE" == unlimited ]] && NOFILE=1048576

runs() {  # engine: can it run a container at all (the daemon is up, the socket is ours)?
    command -v "$1" >/dev/null && "$1" info >/dev/null 2>&1
}

podman_conf() {
    local conf="$CACHE/containers.conf" runtime="" tmp
    mkdir -p "$CACHE"
    # cgroup v1 or hybrid (/sys/fs/cgroup is a tmpfs of controllers): crun refuses it here.
    if [[ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]] && command -v runc >/dev/null; then
        runtime="runc"
    fi
    tmp="$(mktemp "$conf.XXXX")"
    {
        echo "# Written by dev/image.sh for this machine; used through CONTAINERS_CONF."
        echo "[containers]"
        echo "default_ulimits = [\"nofile=$NOFILE:$NOFILE\", \"nproc=$NPROC:$NPROC\"]"
        echo "[engine]"
        [[ -n "$runtime" ]] && echo "runtime = \"$runtime\""
        true
    } >"$tmp"
    mv "$tmp" "$conf"
    echo "$conf"
}

choose_engine() {
    if command -v podman >/dev/null; then
        CONTAINERS_CONF="$(podman_conf)"
        export CONTAINERS_CONF
        if runs podman; then ENGINE=podman; return; fi
    fi
    if runs docker; then ENGINE=docker; unset CONTAINERS_CONF; return; fi
    say "no container engine runs here (install podman and runc, or start a Docker daemon)"
    exit 3
}

has_image() {
    if [[ "$ENGINE" == podman ]]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

# The name the engine files a short name under (podman resolves FROM python:... to docker.io).
qualified() {
    case "$1" in
        */*/*) echo "$1" ;;
        */*) echo "docker.io/$1" ;;
        *) echo "docker.io/library/$1" ;;
    esac
}

make_base() {
    local name root started=$SECONDS
    name="$(qualified "$BASE_IMAGE")"
    if has_image "$name"; then
        say "base $name: present"
        return
    fi
    say "base $name: trying to pull"
    if timeout 120 "$ENGINE" pull -q "$name" >/dev/null 2>&1; then
        say "base $name: pulled"
        return
    fi
    command -v debootstrap >/dev/null || { say "cannot pull $name and debootstrap is missing (apt-get install debootstrap)"; exit 3; }
    [[ "$(id -u)" == 0 ]] || { say "making the base with debootstrap needs root"; exit 3; }
    say "base $name: cannot be pulled; making it with debootstrap from $DEBIAN_MIRROR (a few minutes)"
    root="$(mktemp -d "${TMPDIR:-/tmp}/base-rootfs.XXXX")"
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
        "$SUITE" "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
    # The host's CA bundle, so pip in the build trusts what the host trusts (a proxy's CA too).
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    # Like the upstream image: pip may install (no PEP 668 marker), no apt lists, no docs.
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    tar --numeric-owner -C "$root" -c . | "$ENGINE" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'LABEL org.klaviyo-relay.base="debootstrap stand-in for '"$BASE_IMAGE"'"' \
        --change 'CMD ["python3"]' \
        - "$name" >/dev/null
    rm -rf "$root"
    trap - EXIT
    say "base $name: made in $((SECONDS - started))s"
}

build() {
    local tag="${1:-klaviyo-relay:dev}" started=$SECONDS
    make_base
    say "building $tag with $ENGINE"
    # Host network for the build: pip reaches PyPI the way the host does.
    "$ENGINE" build --network=host --build-arg "PYTHON_IMAGE=$BASE_IMAGE" -t "$tag" .
    say "built $tag in $((SECONDS - started))s; size: $("$ENGINE" image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec)"
}

choose_engine
case "${1:-build}" in
    build) build "${2:-}" ;;
    base) make_base ;;
    env)
        echo "ENGINE=$ENGINE"
        echo "CONTAINERS_CONF=${CONTAINERS_CONF:-}"
        ;;
    *) say "usage: dev/image.sh [build [TAG] | base | env]"; exit 2 ;;
esac
