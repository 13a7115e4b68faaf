#!/pim/bin/sh
# pim's /init for pim-kboot guests (rdinit=/pim/init), run by busybox sh.
#
# /pim/bin/sh is the host's static busybox when there is one (with its applet
# links in /pim/bin), else a symlink to the initramfs's own /bin/sh: the line
# above never changes. /pim/env holds this boot's settings (PIM_TOKEN,
# PIM_MODE, PIM_OUT, PIM_FS, PIM_SHARES, PIM_ROOT) and /pim/cmd the --exec
# command; both come in the small archive pim makes for each boot.
#
# On the output port ($PIM_OUT: ttyS1 set raw, or the console with --console)
# this writes nothing but:
#   RS "PIM-READY-<token>" LF          once userspace is up
#   ...the command's output (stdout and stderr)...
#   RS "PIM-EXIT-<token>:<status>" LF  then powers off
#   RS "PIM-FAIL-<token>:<why>" LF     instead, when a share cannot be mounted
# Kernel messages go to ttyS0 (the VM's log). Modules for virtio, 9p and
# virtiofs are loaded with modprobe when the initramfs has them.
export PATH=/pim/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=${TERM:-vt100}
umask 022
mkdir -p /dev /proc /sys /tmp /run /mnt /root
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
. /pim/env
out=$PIM_OUT
[ "$out" = /dev/ttyS1 ] && stty -F /dev/ttyS1 raw -echo 2>/dev/null
rs=$(printf '\036')
fail() { echo "pim-init: $*" >/dev/console; printf '%sPIM-FAIL-%s:%s\n' "$rs" "$PIM_TOKEN" "$*" >"$out"; poweroff -f; }
if [ -n "$PIM_SHARES$PIM_ROOT" ]; then
    if [ "$PIM_FS" = virtiofs ]; then mods="virtio_pci virtiofs"; else mods="virtio_pci 9pnet_virtio 9p"; fi
    for m in $mods; do modprobe "$m" 2>/dev/null; done
fi
mnt() { # TAG DIR
    mkdir -p "$2"
    if [ "$PIM_FS" = virtiofs ]; then mount -t virtiofs "$1" "$2"
    else mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none "$1" "$2"; fi
}
chr=
if [ -n "$PIM_ROOT" ]; then
    mnt "$PIM_ROOT" /newroot || fail "cannot mount root share $PIM_ROOT (no 9p/virtiofs in this kernel or initramfs?)"
    for d in dev proc sys; do mkdir -p /newroot/$d; mount -o bind /$d /newroot/$d 2>/dev/null; done
    mount -t tmpfs tmpfs /newroot/tmp 2>/dev/null
    chr=/newroot
fi
for t in $PIM_SHARES; do
    mnt "$t" "$chr/mnt/$t" || fail "cannot mount share $t (no 9p/virtiofs in this kernel or initramfs?)"
done
mount -t tmpfs tmpfs /tmp 2>/dev/null
# on the console (--console) the markers are erased from the screen as soon as they are written
if [ "$out" = /dev/ttyS1 ]; then end='\n'; else end='\r\033[2K'; fi
printf "%sPIM-READY-%s$end" "$rs" "$PIM_TOKEN" >"$out"
case $PIM_MODE in
exec)
    if [ -n "$chr" ]; then chroot "$chr" /bin/sh -c "cd /; $(cat /pim/cmd)" >"$out" 2>&1 </dev/null
    else (cd /; sh -c "$(cat /pim/cmd)") >"$out" 2>&1 </dev/null; fi
    st=$?
    printf "%sPIM-EXIT-%s:%d$end" "$rs" "$PIM_TOKEN" "$st" >"$out"
    sync
    poweroff -f ;;
handoff)
    # the initramfs's (or root share's) own init, when it has one; else the shell below
    if [ -n "$chr" ] && [ -x "$chr/sbin/init" ]; then
        for d in dev proc sys; do umount /newroot/$d 2>/dev/null; done
        umount /proc /sys 2>/dev/null
        exec switch_root /newroot /sbin/init
    elif [ -z "$chr" ] && [ -x /init ]; then
        umount /proc /sys 2>/dev/null
        exec /init "$@"
    fi ;;
esac
# shell: a root shell on the console, again and again. The ACPI power button
# (pim-stop) powers off when the kernel has the button driver (built in or a module).
hostname pim 2>/dev/null
if { modprobe button; modprobe evdev; } 2>/dev/null && [ -d /sys/module/button ]; then
    mkdir -p /etc/acpi/PWRF && printf '#!/pim/bin/sh\npoweroff -f\n' >/etc/acpi/PWRF/00000080 && chmod +x /etc/acpi/PWRF/00000080
    acpid -l /tmp/acpid.log 2>/dev/null
fi
while :; do
    if [ -n "$chr" ]; then setsid -c chroot "$chr" /bin/sh -l </dev/console >/dev/console 2>&1
    else setsid -c sh -l </dev/console >/dev/console 2>&1; fi
done
