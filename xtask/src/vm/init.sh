#!/bin/sh
# Guest init of xtask's VM harness (xtask/src/vm/init.sh), PID 1 of every guest.
# Markers on the console (ttyS0) let the host time the boot and the scenario; results go to
# ttyS1 as frames: "GUARD-FRAME <byte length> <name>" (or GUARD-GZFRAME for gzipped
# contents), base64 lines, "GUARD-END", and a final "GUARD-DONE" once everything is sent.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/ TERM=dumb

if [ "$1" != stage2 ]; then
    # Stage 1, in the initramfs: move to a tmpfs root. An initramfs (rootfs) cannot be
    # pivot_root'ed, and a container runtime in the guest needs pivot_root.
    echo "GUARD-BOOT"
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mkdir -p /newroot
    mount -t tmpfs -o mode=0755 tmpfs /newroot
    # mv, not cp: file by file, so the image is not held twice in RAM. /init stays, since
    # switch_root checks it is still there; /bin goes last and busybox is then called from
    # its new place.
    cp -a /init /newroot/init
    for entry in /*; do
        case "$entry" in /newroot | /proc | /sys | /dev | /init | /bin) continue ;; esac
        mv "$entry" /newroot/
    done
    mv /bin /newroot/
    bb=/newroot/bin/busybox
    $bb mkdir -p /newroot/proc /newroot/sys /newroot/dev
    $bb mount --move /proc /newroot/proc
    $bb mount --move /sys /newroot/sys
    $bb mount --move /dev /newroot/dev
    # switch_root empties the old root (frees its memory) and execs stage 2 as PID 1.
    exec $bb switch_root /newroot /init stage2
fi

# Stage 2, on the tmpfs root.
mkdir -p /sys/fs/cgroup /tmp /run /results /guard/out
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# Modules the scenario needs (vsock on Debian's kernels), in dependency order.
if [ -f /guard/modules ]; then
    while read -r module; do
        insmod "/lib/modules/guard/$module" || echo "GUARD-MODULE-FAILED $module"
    done < /guard/modules
fi
# Frames must pass unaltered: no echo, no CR/LF translation on the results port.
stty -F /dev/ttyS1 raw -echo
# The scenario stands for the guest agent, which protects itself from the OOM killer; its
# children inherit the score (docs/ARCHITECTURE.md says what that means for containers).
if [ -f /guard/oom_score_adj ]; then
    cat /guard/oom_score_adj > /proc/self/oom_score_adj
fi
read -r boot_uptime _ < /proc/uptime
echo "GUARD-RUN-START"
(cd / && exec sh /guard/scenario.sh) < /dev/null > /guard/out/stdout 2> /guard/out/stderr
echo "$?" > /guard/out/exit
read -r end_uptime _ < /proc/uptime
echo "GUARD-RUN-END"
printf 'boot_uptime=%s\nend_uptime=%s\n' "$boot_uptime" "$end_uptime" > /guard/out/times

frame() {
    # The leading empty line separates the header from anything else written to the port.
    echo
    size=$(wc -c < "$2")
    # The UART moves ~400 KB/s under TCG: compress anything big (logs shrink 5-10x).
    if [ "$size" -gt 16384 ] && gzip -c "$2" > /guard/frame.gz; then
        echo "GUARD-GZFRAME $(wc -c < /guard/frame.gz) $1"
        base64 /guard/frame.gz
        rm -f /guard/frame.gz
    else
        echo "GUARD-FRAME $size $1"
        base64 "$2"
    fi
    echo "GUARD-END"
}
# One open of ttyS1 for everything: its last close waits until the UART has sent all bytes,
# so nothing is lost to the power-off below.
{
    for name in exit stdout stderr times; do
        frame "$name" "/guard/out/$name"
    done
    find /results -type f | while read -r file; do
        frame "results/${file#/results/}" "$file"
    done
    echo
    echo "GUARD-DONE"
} > /dev/ttyS1
echo "GUARD-DONE"
sync
# A reboot ends QEMU (-no-reboot) on every machine: microvm has no ACPI power-off.
reboot -f
