"""The /init of pvsd's initramfs overlay: from kernel start to the image's own /sbin/init. Pure.

It runs as PID 1 under busybox's sh, from the overlay that iPXE loads after the image's own
initramfs (later files replace earlier ones, so this /init is the one that runs):

1. load the kernel modules the overlay carries (the NIC, nbd, ext4), in dependency order;
2. find the NIC whose MAC is `pvsd.mac`, and bring it up with DHCP (busybox udhcpc);
3. start the agent (pvsd/target/diskless.py) as `@pvsd-agent`; it logs in, attaches the
   vDisk to /dev/nbd0 and writes its ready file;
4. mount the root (`pvsd.root=`, else the first partition of /dev/nbd0 that holds an ext4
   with an init, else the whole disk), move /dev, /proc, /sys and /run into it;
5. `switch_root` to `init=` (default /sbin/init). The agent stays behind, in memory.

When a step fails, it says which and why on the console and follows `pvsd.onfail`: reboot
after a pause (the default, as a PVS target does), power off, or a shell.
"""

from __future__ import annotations

__all__ = ["AGENT_LAUNCHER", "INIT_MARKER", "guest_init", "udhcpc_script"]

INIT_MARKER = "pvsd-init:"

_INIT = r"""#!/pvsd/bin/sh
# pvsd diskless init: NIC up, log in, /dev/nbd0, switch_root. See pvsd/boot/guest_init.py.
export PATH=/pvsd/bin
say() { echo "{marker} $*"; }
cmdline_value() {
    for word in $(cat /proc/cmdline); do case "$word" in "$1="*) echo "${word#*=}" ;; esac; done
}
fail() {
    say "FAILED: $*"
    case "$(cmdline_value pvsd.onfail)" in
        poweroff) sleep 2; poweroff -f ;;
        shell) say "starting a shell"; exec sh ;;
        *) say "rebooting in 10 s"; sleep 10; reboot -f ;;
    esac
}
mkdir -p /proc /sys /dev /run /newroot /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
say "pvsd initramfs $(uname -r)"
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/pvsd/modules/$module.ko" 2>/dev/null || grep -q "^$module " /proc/modules \
        || say "insmod $module failed"
done < /pvsd/modules/order

mac=$(cmdline_value pvsd.mac)
[ -n "$mac" ] || fail "no pvsd.mac= on the kernel command line"
want=$(echo "$mac" | tr 'A-F-' 'a-f:')
nic=""
n=0
while :; do
    for path in /sys/class/net/*; do
        [ "$(cat "$path/address" 2>/dev/null)" = "$want" ] && nic=${path##*/}
    done
    n=$((n + 1))
    [ -n "$nic" ] && break
    [ $n -gt 100 ] && fail "no network interface with MAC $want (is its driver in the overlay?)"
    sleep 0.1
done
ip link set lo up
ip link set "$nic" up
say "network interface $nic ($want): asking DHCP"
n=0
until udhcpc -i "$nic" -s /pvsd/udhcpc.script -q -f -n -t 4 -T 2 >/dev/null 2>&1; do
    n=$((n + 1))
    [ $n -ge 15 ] && fail "no DHCP answer on $nic"
    say "no DHCP answer on $nic yet; trying again"
done
say "address $(ip -4 -o addr show dev "$nic" | awk '{print $4}')"

( cd / && export PYTHONHOME=/pvsd/python PYTHONPATH=/pvsd/site PYTHONUTF8=1 LD_LIBRARY_PATH=/pvsd/lib
  exec -a {argv0} /pvsd/bin/python3 -S -B /pvsd/agent.py ) &
agent=$!
n=0
until [ -s {ready} ]; do
    kill -0 $agent 2>/dev/null || fail "the agent stopped before it attached the vDisk (its lines are above)"
    n=$((n + 1))
    [ $n -gt 6000 ] && fail "the agent did not attach the vDisk within 10 minutes"
    sleep 0.1
done
say "vDisk attached: $(cat {ready})"

root=$(cmdline_value pvsd.root)
init=$(cmdline_value init)
init=${init:-/sbin/init}
if [ -z "$root" ]; then
    for candidate in /dev/nbd0p1 /dev/nbd0p2 /dev/nbd0p3 /dev/nbd0p4 /dev/nbd0p5 /dev/nbd0p6 /dev/nbd0; do
        [ -b "$candidate" ] || continue
        if mount -t ext4 "$candidate" /newroot 2>/dev/null; then
            if [ -x "/newroot$init" ] || [ -L "/newroot$init" ]; then root=$candidate; break; fi
            umount /newroot
        fi
    done
    [ -n "$root" ] || fail "no ext4 with $init on /dev/nbd0 or its partitions"
else
    mount -t ext4 "$root" /newroot || fail "cannot mount pvsd.root=$root"
fi
say "root $root mounted; switch_root to $init"
for fs in dev proc sys run; do
    mkdir -p "/newroot/$fs" 2>/dev/null
    mount --move "/$fs" "/newroot/$fs" || say "could not move /$fs into the root"
done
exec switch_root /newroot "$init"
"""

_UDHCPC_SCRIPT = r"""#!/pvsd/bin/sh
# busybox udhcpc calls this with the lease in the environment: bound/renew set the address.
case "$1" in
    deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        ;;
esac
exit 0
"""


# /pvsd/agent.py, what /init runs. Nothing in the guest speaks TLS or needs OpenSSL's hashes: with
# these two left out before anything imports asyncio or hashlib, both fall back to what they have
# built in, and the overlay carries no OpenSSL (6 MB). The import probe runs the same lines.
AGENT_LAUNCHER = """import sys
sys.modules["_ssl"] = None
sys.modules["_hashlib"] = None
from pvsd.target.diskless import main
sys.exit(main(sys.argv[1:]))
"""


def guest_init(ready_file: str, argv0: str) -> str:
    """The text of /init. `ready_file` is the agent's (diskless.READY_FILE), `argv0` its name."""
    return _INIT.replace("{marker}", INIT_MARKER).replace("{ready}", ready_file).replace("{argv0}", argv0)


def udhcpc_script() -> str:
    return _UDHCPC_SCRIPT
