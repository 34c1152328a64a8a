#!/bin/bash
# amber's /etc at boot (dracut module): merge the admin's edits into a new snapshot's /etc at
# its first boot, then mount the booted snapshot's /etc subvolume read-write over the read-only
# root. Installed by amber's package in /usr/lib/dracut/modules.d/90amber-etc.

check() {
    require_binaries chroot mount umount || return 1
    return 0
}

depends() {
    echo btrfs
}

install() {
    inst_multiple chroot mount umount sync stat
    inst_hook pre-pivot 50 "$moddir/amber-etc.sh"
}
