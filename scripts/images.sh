#!/usr/bin/env bash
# `make images`: what `docker compose up -d --build` needs on a machine with no image registry.
# - a Docker engine: started here (dockerd, logs in var/dockerd.log) when root and none answers;
# - debian:bookworm-slim, the Dockerfile's base: pulled when a registry answers, else built
#   with debootstrap from Debian's mirror (minbase, no docs or apt lists, like the official one);
# - the host's own CAs (a TLS-inspecting proxy's), copied where the build finds them;
# - then the farm's image, pvsd:local (docker-compose.yml), built.
# Users with a registry never need this: `docker compose up -d --build` pulls the base itself.
set -euo pipefail
cd "$(dirname "$0")/.."
base=debian:bookworm-slim
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { printf 'images: %s\n' "$*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
    scripts/install-debian-deps docker.io docker-compose debootstrap
fi

if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v dockerd >/dev/null; then
        say "no Docker engine answers, and this user cannot start one: start dockerd, then run this again"
        exit 1
    fi
    mkdir -p var
    say "starting dockerd (logs in var/dockerd.log)"
    nohup dockerd >var/dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { say "dockerd did not start: see var/dockerd.log"; exit 1; }
fi

if docker image inspect "$base" >/dev/null 2>&1; then
    say "$base is here"
elif timeout 60 docker pull "$base" >/dev/null 2>&1; then
    say "pulled $base"
else
    say "no registry answers: building $base with debootstrap from $mirror"
    rootfs=$(mktemp -d /tmp/pvsd-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/*
    # What the official slim image says to apt: no docs, no caches kept.
    printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-include /usr/share/doc/*/copyright\n' \
        >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
    printf 'APT::Keep-Downloaded-Packages "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-clean"
    tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$base" >/dev/null
    say "built $base ($(docker image inspect -f '{{.Size}}' "$base" | numfmt --to=iec))"
fi

# The host's own CAs, for pip inside the build (the Dockerfile copies var/compose-ca/).
rm -rf var/compose-ca
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p var/compose-ca
    cp /usr/local/share/ca-certificates/*.crt var/compose-ca/
    say "the build trusts this host's own CAs too: $(cd var/compose-ca && echo *.crt)"
fi

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
say "building the farm's image with ${compose[*]}"
"${compose[@]}" build
