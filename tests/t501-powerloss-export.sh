# No dirty bit lost on power failure, for export (issue 12 item 2): a full
# backup adds the tracking bitmap, and an incremental one clears it, only
# once the backup is durable under its final name.  Each export runs once
# under the power-loss harness (tests/crash/README); in every crash state
# qemu-img check finds no corruption, and the backup chain that exists
# (full, or mon backed by full) equals the disk wherever the bitmap is
# clean (a bitmap without its full backup would be a lost change too).
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/bitmap-lib.sh"
. "$tests/crash-lib.sh"

ok qemu-img create -q -f qcow2 "$D/vm.qcow2" 4M
ok qemu-io -f qcow2 -c 'write -P 1 0 3M' -c 'write -z 3M 512k' "$D/vm.qcow2"
ok qemu-img convert -O raw "$D/vm.qcow2" "$T/vm-full.raw"

# WANT: what the disk held; then the backups, newest first: the newest
# that exists in this crash state is what a restore reads.
check_chain() {
    local want=$1 b
    shift
    crash_fs_check "$S/vm.qcow2"
    if ! qemu_bitmaps "$S/vm.qcow2" | grep -q '"name":"n"'; then
        checks=$((checks + 1))
        [ ! -e "$S/mon.qcow2" ] || die "$crash_where: an incremental backup, but no bitmap"
        return
    fi
    for b in "$@"; do
        [ -e "$S/$b" ] || continue
        crash_fs_check "$S/$b"
        crash_covered "$S/vm.qcow2" n "$S/$b" "$want"
        return
    done
    die "$crash_where: bitmap n exists but no backup does"
}
check_full() { check_chain "$T/vm-full.raw" full.qcow2; }
check_mon() { check_chain "$T/vm-mon.raw" mon.qcow2 full.qcow2; }
check_tue() { check_chain "$T/vm-tue.raw" tue.qcow2 mon.qcow2 full.qcow2; }

# 1. The full backup, which creates bitmap n.
ok crash_run full "$IMGTOOL" export -B n "$D/vm.qcow2" "$D/full.qcow2"
crash_states full 10 2 check_full

# 2. Changes, then an incremental backup backed by the full one.
ok qemu-io -f qcow2 -c 'write -P 2 64k 128k' -c 'write -P 3 1M 64k' -c 'write -z 2M 256k' \
    -c 'discard 2560k 128k' -c 'write -P 4 3200k 64k' "$D/vm.qcow2"
ok qemu-img convert -O raw "$D/vm.qcow2" "$T/vm-mon.raw"
ok crash_run mon "$IMGTOOL" export -s incremental -B n -b "$D/full.qcow2" \
    "$D/vm.qcow2" "$D/mon.qcow2"
ok qemu-img compare "$D/vm.qcow2" "$D/mon.qcow2"
crash_states mon 10 2 check_mon

# 3. More changes, and the next incremental fails (its writes fail with
# EIO): nothing appears and the bitmap keeps every change.

ok qemu-io -f qcow2 -c 'write -P 5 0 64k' -c 'write -P 6 1536k 192k' "$D/vm.qcow2"
ok qemu-img convert -O raw "$D/vm.qcow2" "$T/vm-tue.raw"
before=$(imgtool_dirty "$D/vm.qcow2" n)
WRITELOG_FAULT_FILE='tue.qcow2.imgtool-tmp-*' WRITELOG_FAULT_AFTER=3 \
    expect_status 1 crash_run tue-fail "$IMGTOOL" export -s incremental -B n \
    -b "$D/mon.qcow2" "$D/vm.qcow2" "$D/tue.qcow2"
expect_match "$(err)" 'tue.qcow2'
[ ! -e "$D/tue.qcow2" ] || die "a failed export left tue.qcow2"
expect_eq "$(imgtool_dirty "$D/vm.qcow2" n)" "$before" "bitmap n after a failed export"
crash_states tue-fail 10 2 check_tue

echo "$crash_states_checked crash states"
passed
