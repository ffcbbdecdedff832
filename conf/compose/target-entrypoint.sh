#!/bin/sh
# The compose farm's target service: a diskless QEMU VM (TCG) on the compose network. The
# container's eth0 goes into a bridge with the VM's tap, so the VM's DHCP broadcasts reach dhcp
# (its address) and pvs1..3 (proxy DHCP, TFTP, HTTP, login, streaming) as a real NIC's would.
# Its firmware is QEMU's iPXE ROM (BIOS); the console is this container's log.
set -eu
mac=${TARGET_MAC:?set TARGET_MAC}
ip addr flush dev eth0
ip link add br0 type bridge
ip link set eth0 master br0
ip link set br0 up
ip tuntap add tap0 mode tap
ip link set tap0 master br0
ip link set tap0 up
echo "{\"event\": \"target: booting a diskless VM from the network\", \"mac\": \"$mac\", \"level\": \"info\", \"logger\": \"compose\"}"
exec qemu-system-x86_64 -nographic -no-reboot -accel tcg -m "${TARGET_MEMORY_MB:-768}" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
    -device "e1000,netdev=n0,mac=$mac,romfile=/usr/lib/ipxe/qemu/pxe-e1000.rom" -boot n
