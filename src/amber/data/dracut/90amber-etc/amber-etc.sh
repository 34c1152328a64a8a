#!/bin/sh
# amber (dracut pre-pivot hook): the root is mounted at $NEWROOT, nothing has read its /etc yet.
#
# 1. If the booted snapshot's /etc holds a sync point (its first boot after a transaction, or a
#    snapshot transactional-update prepared), run the snapshot's own amber in a chroot, with
#    /.snapshots and /var mounted read-write, to merge the parent's /etc into it:
#    `amber etc merge-pending`. Its conflicts go to /var/lib/amber/etc-merge/<N>/. A failed
#    merge leaves the new /etc as the transaction made it; the boot goes on and says so.
# 2. Mount the snapshot's /etc subvolume read-write at $NEWROOT/etc: the root's mount is
#    read-only, and a read-only mount covers its nested subvolumes too.
#
# AMBER_ETC_MERGE replaces the merge command (the tests run the hook on a root without Python).

NEWROOT=${NEWROOT:-/sysroot}

amber_etc_say() {
    echo "amber-etc: $*" > /dev/kmsg 2>/dev/null || true
    echo "amber-etc: $*" >&2
}

# The mount of $NEWROOT: subvolume path, filesystem type and device, from mountinfo
# ("id parent major:minor root mountpoint options [optional...] - fstype source superopts").
amber_etc_mount_of() {
    fsroot="" fstype="" source="" etc_mounted=""
    while read -r _id _parent _dev root point rest; do
        [ "$point" = "$NEWROOT/etc" ] && etc_mounted=yes
        [ "$point" = "$NEWROOT" ] || continue
        fsroot=$root
        set -- $rest
        while [ $# -gt 0 ] && [ "$1" != "-" ]; do shift; done
        fstype=$2 source=$3
    done < /proc/self/mountinfo
}

amber_etc_main() {
    amber_etc_mount_of
    [ "$fstype" = btrfs ] || return 0
    snapshot=${fsroot#/}                     # e.g. @/.snapshots/2/snapshot
    case "$snapshot" in */.snapshots/*/snapshot) ;; *) return 0 ;; esac
    container=${snapshot%%/.snapshots/*}     # e.g. @
    [ -d "$NEWROOT/etc" ] && [ -z "$etc_mounted" ] || return 0  # no /etc, or done already

    if [ -d "$NEWROOT/etc/etc.syncpoint" ]; then
        mounted=""
        for name in .snapshots var; do
            if mount -t btrfs -o "rw,subvol=$container/$name" "$source" "$NEWROOT/$name"; then
                mounted="$NEWROOT/$name $mounted"
            fi
        done
        for name in proc dev; do
            if [ -z "$AMBER_ETC_MERGE" ] && mount --bind "/$name" "$NEWROOT/$name"; then
                mounted="$NEWROOT/$name $mounted"
            fi
        done
        if [ -n "$AMBER_ETC_MERGE" ]; then
            $AMBER_ETC_MERGE
        else
            chroot "$NEWROOT" /usr/bin/amber etc merge-pending
        fi
        amber_status=$?
        [ $amber_status -eq 0 ] || amber_etc_say "the /etc merge failed (exit $amber_status): /etc is" \
            "as the update left it; the admin's edits since the update are in the previous" \
            "snapshot's /etc (see 'amber status')"
        sync
        for point in $mounted; do umount "$point"; done
    fi

    # /etc is its own subvolume (its inode is 256) in snapshots made since amber kept it apart
    if [ "$(stat -c %i "$NEWROOT/etc" 2>/dev/null)" = 256 ]; then
        mount -t btrfs -o "rw,subvol=$snapshot/etc" "$source" "$NEWROOT/etc" \
            || amber_etc_say "cannot mount /etc read-write; it stays read-only"
    fi
}

amber_etc_main
