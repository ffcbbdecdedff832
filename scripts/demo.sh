#!/usr/bin/env bash
# `make demo`: a two-server farm on this machine (and a third with a store of its own), on the
# embedded defaults.
# It initialises a farm in ./var/, imports a generated vDisk, starts pvs1 on 127.0.0.11 and
# pvs2 on 127.0.0.12, shows them seeing each other, copies the vDisk through a target, then
# stops them cleanly. On the way, pvs3 on 127.0.0.13, with a store of its own, pulls the vDisk
# from the other two over HTTP (replication) with its progress shown. Then, where the machine
# can run the lab, a PXE boot and a diskless Linux VM that keeps running when its server is
# SIGKILLed. Logs are in var/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
pvsd=(.venv/bin/pvsd)
logs=var/demo
pids=()

lab_up=0
follower=""
cleanup() {
    if [ -n "$follower" ]; then kill "$follower" 2>/dev/null || true; fi
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$lab_up" = 1 ]; then "${pvsd[@]}" lab down --state var/lab >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf var
mkdir -p "$logs"

step "pvsd farm init   (SQLite farm store in ./var/farm.db)"
"${pvsd[@]}" farm init --name demo

step "pvsd vdisk import   (a generated 32 MiB raw image into the shared store ./var/store)"
head -c 33554432 /dev/urandom >var/demo-disk.raw
"${pvsd[@]}" vdisk import demo-disk var/demo-disk.raw --cache server
"${pvsd[@]}" device add 52:54:00:12:34:56 --name target1 --vdisk demo-disk

guest=0
if [ "$(id -u)" -eq 0 ] && command -v qemu-system-x86_64 >/dev/null && ls /boot/vmlinuz-* >/dev/null 2>&1; then
    step "a Linux guest's root file system as a vDisk (standard mode, write cache on the device)"
    .venv/bin/python scripts/demo_guest.py build var/demo-linux.img
    "${pvsd[@]}" vdisk import demo-linux var/demo-linux.img --cache device --no-boot
    "${pvsd[@]}" device add 52:54:00:12:34:57 --name vm1 --vdisk demo-linux
    guest=1
fi

step "pvsd serve: pvs1 on 127.0.0.11 and pvs2 on 127.0.0.12 (logs in $logs/)"
for n in 1 2; do
    # Proxy DHCP listens on the server's loopback address only: the demo answers nothing on
    # this host's real network. The API (HTTP) serves /replication/ to pvs3, below.
    PVSD_DHCP__BIND="127.0.0.1$n" PVSD_API__ENABLED=true PVSD_REPLICATION__ENABLED=true \
        "${pvsd[@]}" --log-format json serve --name "pvs$n" --address "127.0.0.1$n" >"$logs/pvs$n.log" 2>&1 &
    pids+=($!)
    echo "started pvs$n (pid $!)"
done

for _ in $(seq 50); do
    alive=$("${pvsd[@]}" server list --json | grep -c '"state": "alive"' || true)
    [ "$alive" -ge 2 ] && break
    sleep 0.2
done

step "pvsd server list   (each server sees the other through the farm)"
"${pvsd[@]}" server list

for _ in $(seq 50); do
    verified=$("${pvsd[@]}" vdisk replicas --json | grep -c '"state": "verified"' || true)
    [ "$verified" -ge 2 ] && break
    sleep 0.2
done

step "pvsd vdisk replicas   (both servers found the image in the store and checked its sha256)"
"${pvsd[@]}" vdisk replicas

# -- replication: a third server with a store of its own pulls the version from the other two ----
step "pvsd serve: pvs3 on 127.0.0.13 with its own store ./var/store-pvs3 (replication on, pulls capped at 64 Mbit/s)"
# pvs3 shares the farm but not the store: every interval_s it pulls the standard-mode versions
# its store lacks from the live peers that hold them verified, over their [api] HTTP port
# (/replication/NAME/VERSION/...). The cap stretches the 32 MiB copy over a few seconds.
PVSD_DHCP__BIND=127.0.0.13 PVSD_SERVER__STORE=var/store-pvs3 PVSD_API__ENABLED=true \
    PVSD_REPLICATION__ENABLED=true PVSD_REPLICATION__INTERVAL_S=1 PVSD_REPLICATION__MAX_RATE_MBIT=64 \
    "${pvsd[@]}" --log-format json serve --name pvs3 --address 127.0.0.13 >"$logs/pvs3.log" 2>&1 &
pvs3=$!
pvs3_slot=${#pids[@]}
pids+=("$pvs3")
echo "started pvs3 (pid $pvs3)"
started=$SECONDS
# sync waits for the live servers: pvs3 must be one before it is asked.
for _ in $(seq 50); do
    alive=$("${pvsd[@]}" server list --json | grep -c '"state": "alive"' || true)
    [ "$alive" -ge 3 ] && break
    sleep 0.2
done
[ "$alive" -ge 3 ] || { echo "pvs3 did not join the farm: see $logs/pvs3.log" >&2; exit 1; }

step "pvsd vdisk sync demo-disk --wait   (follows the copies until every live server holds the version verified)"
if [ -t 2 ]; then
    "${pvsd[@]}" vdisk sync demo-disk --wait --timeout 120
else
    # sync draws its progress bar only on a terminal: here, show pvs3's replica as it changes.
    follow_pvs3() {
        local last="" row
        while :; do
            row=$("${pvsd[@]}" vdisk replicas demo-disk 2>/dev/null | awk '$3 == "pvs3"' || true)
            if [ -n "$row" ] && [ "$row" != "$last" ]; then echo "  $row"; last=$row; fi
            sleep 0.5
        done
    }
    follow_pvs3 &
    follower=$!
    "${pvsd[@]}" vdisk sync demo-disk --wait --timeout 120
    kill "$follower" 2>/dev/null || true
    wait "$follower" 2>/dev/null || true
    follower=""
fi
echo "pvs3 held demo-disk $((SECONDS - started)) s after it started"

step "pvsd vdisk replicas   (pvs3's copy is verified; FETCHED: the bytes it pulled over HTTP)"
"${pvsd[@]}" vdisk replicas demo-disk
copy=$(sha256sum var/store-pvs3/demo-disk/v1.img)
echo "sha256 of pvs3's copy: ${copy%% *}"

# pvs3 goes on to the versions it still lacks (demo-linux); stopping it keeps its partial copy,
# which its next start resumes. Stopped, it takes no logins: the steps below stay on pvs1/pvs2.
step "stopping pvs3 with SIGTERM   (the rest of the demo runs on pvs1 and pvs2)"
kill -TERM "$pvs3"
wait "$pvs3" || true
unset "pids[$pvs3_slot]"
"${pvsd[@]}" server list

step "pvsd target copy   (log in by MAC on UDP 6910, stream the whole vDisk from the chosen server)"
"${pvsd[@]}" --log-level warning target copy --mac 52:54:00:12:34:56 --servers 127.0.0.11,127.0.0.12 \
    --out var/demo-copy.raw
echo "sha256 of the image: $(sha256sum var/demo-disk.raw | cut -d' ' -f1)"

step "pvsd target write-test   (writes go to the device's overlay on the server; a fresh login wipes it)"
"${pvsd[@]}" --log-level warning target write-test --mac 52:54:00:12:34:56 --servers 127.0.0.11,127.0.0.12

step "pvsd session list"
"${pvsd[@]}" session list

step "stopping pvs1 with SIGTERM: the farm sees it stopped at once"
kill -TERM "${pids[0]}"
wait "${pids[0]}" || true
"${pvsd[@]}" server list

step "pvsd target copy again, with pvs1 gone: the login goes to pvs2"
"${pvsd[@]}" --log-level warning target copy --mac 52:54:00:12:34:56 --servers 127.0.0.11,127.0.0.12 --out /dev/null

if [ "$guest" = 1 ]; then
    step "restarting pvs1: it joins the farm again and verifies its replicas"
    PVSD_DHCP__BIND="127.0.0.11" PVSD_API__ENABLED=true PVSD_REPLICATION__ENABLED=true \
        "${pvsd[@]}" --log-format json serve --name pvs1 --address 127.0.0.11 >>"$logs/pvs1.log" 2>&1 &
    pids[0]=$!
    for _ in $(seq 100); do
        verified=$("${pvsd[@]}" vdisk replicas demo-linux --json | grep -c '"state": "verified"' || true)
        alive=$("${pvsd[@]}" server list --json | grep -c '"state": "alive"' || true)
        [ "$verified" -ge 2 ] && [ "$alive" -ge 2 ] && break
        sleep 0.2
    done
    "${pvsd[@]}" server list

    step "a Linux VM boots from the streamed vDisk (QEMU -> NBD -> pvsd target boot -> pvs1/pvs2); its server is killed halfway"
    .venv/bin/python scripts/demo_guest.py boot var/demo-linux.img --servers 127.0.0.11,127.0.0.12 \
        --pid "pvs1=${pids[0]}" --pid "pvs2=${pids[1]}"
fi

step "the audit log"
"${pvsd[@]}" farm audit --limit 20

# -- a real PXE boot, when this machine can run the lab (root, /dev/net/tun, QEMU) ----------------
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/net/tun ] || ! command -v qemu-system-x86_64 >/dev/null; then
    step "skipping the QEMU boot: it needs root, /dev/net/tun and qemu-system-x86 (make test installs it)"
    exit 0
fi

step "pvsd lab up --servers 2   (namespaces: a bridge, dnsmasq as the site DHCP, two pvsd servers)"
lab_up=1
"${pvsd[@]}" lab up --servers 2 --state var/lab
PVSD_FARM__DATABASE="sqlite:///$PWD/var/lab/farm.db" "${pvsd[@]}" device add 52:54:00:de:00:01 --name lab-vm1
sleep 2   # the servers read the farm's devices once a heartbeat

step "pvsd lab boot --firmware bios   (QEMU's iPXE ROM: proxy DHCP -> TFTP pvs.ipxe -> device script)"
"${pvsd[@]}" lab boot --state var/lab --firmware bios --mac 52:54:00:de:00:01

if [ -e /bin/busybox ] && ls /boot/vmlinuz-* >/dev/null 2>&1 && command -v debugfs >/dev/null; then
    step "a diskless VM PXE-boots Linux from the lab; its server is SIGKILLed while the OS runs"
    .venv/bin/python scripts/demo_diskless.py
else
    step "skipping the diskless boot: it needs linux-image-amd64, busybox-static and e2fsprogs (make test installs them)"
fi

step "pvsd lab down"
"${pvsd[@]}" lab down --state var/lab
lab_up=0
