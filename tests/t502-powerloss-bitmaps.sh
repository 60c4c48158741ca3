# Persistent bitmaps survive power failure (issue 12 item 2): an "imgtool
# bitmap" transaction leaves the old set or the new one, and a session
# writing guest data never leaves consistent-looking bitmaps that miss a
# durable write.  Each command runs once under the power-loss harness
# (tests/crash/README); every crash state must pass qemu-img check.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/bitmap-lib.sh"
. "$tests/crash-lib.sh"

# The bitmaps of IMG: QEMU's list, then each one's dirty extents.
state() {
    local list name
    list=$(qemu_bitmaps "$1")
    echo "$list"
    for name in $(grep -o '"name":"[^"]*"' <<<"$list" | sed 's/"name":"\(.*\)"/\1/'); do
        echo "$name: $(imgtool_dirty "$1" "$name" | tr '\n' ' ')"
    done
}

ok qemu-img create -q -f qcow2 -o cluster_size=4k "$D/disk.qcow2" 8M
ok imgtool bitmap --add -g 512 "$D/disk.qcow2" a
ok imgtool bitmap --add -g 4k "$D/disk.qcow2" b
ok imgtool bitmap --add -g 64k --disabled "$D/disk.qcow2" c
ok imgtool io -c 'write 0 3k' -c 'write -z 1M 512k' -c 'write 3M 1' -c 'discard 6M 64k' \
    "$D/disk.qcow2"
ok qemu-io -f qcow2 -c 'write 5M 100k' "$D/disk.qcow2"
ok qemu-img create -q -f qcow2 "$D/other.qcow2" 8M
ok imgtool bitmap --add "$D/other.qcow2" o
ok imgtool io -c 'write 7M 200k' "$D/other.qcow2"
old=$(state "$D/disk.qcow2")

# 1. One transaction of four operations, then a merge of another image's
# bitmap.
ok crash_run transaction "$IMGTOOL" bitmap --remove --add -g 64k --merge b --disable \
    "$D/disk.qcow2" a
new=$(state "$D/disk.qcow2")
[ "$new" != "$old" ] || die "the transaction changed nothing"
saw_old=0 saw_new=0
check_transaction() {
    crash_fs_check "$S/disk.qcow2"
    local now
    now=$(state "$S/disk.qcow2")
    if [ "$now" = "$old" ]; then
        saw_old=$((saw_old + 1))
    elif [ "$now" = "$new" ]; then
        saw_new=$((saw_new + 1))
    else
        die "$crash_where: neither the old nor the new bitmaps: $now"
    fi
}
crash_states transaction 12 2 check_transaction
[ $saw_old -ge 1 ] && [ $saw_new -ge 1 ] || die "crash states: $saw_old old, $saw_new new"
old=$new
ok crash_run merge "$IMGTOOL" bitmap --merge o -b "$D/other.qcow2" "$D/disk.qcow2" b
new=$(state "$D/disk.qcow2")
[ "$new" != "$old" ] || die "the merge changed nothing"
saw_old=0 saw_new=0
crash_states merge 8 2 check_transaction
[ $saw_old -ge 1 ] && [ $saw_new -ge 1 ] || die "merge crash states: $saw_old old, $saw_new new"

# 2. A session writing guest data (new clusters, a zero write, a discard)
# with bitmap b (4 KiB granules; a and c are disabled now) recording: in
# every crash state the bitmaps are marked in use (to be rebuilt), or b
# covers every byte that differs from the image before the session.
cp "$D/disk.qcow2" "$T/base.qcow2"
ok qemu-img convert -O raw "$T/base.qcow2" "$T/base.raw"
ok crash_run session "$IMGTOOL" io -c 'write -P 5 2M 20k' -c 'write -P 6 4095k 8k' \
    -c 'write -z 5M 64k' -c 'discard 0 4k' -c 'write -P 7 7M 1M' "$D/disk.qcow2"
in_use=0 consistent=0
check_session() {
    crash_fs_check "$S/disk.qcow2"
    if qemu_bitmaps "$S/disk.qcow2" | grep -q in-use; then
        in_use=$((in_use + 1))
        return
    fi
    consistent=$((consistent + 1))
    crash_covered "$S/disk.qcow2" b "$S/disk.qcow2" "$T/base.raw"
}
crash_states session 12 2 check_session
[ $in_use -ge 1 ] && [ $consistent -ge 1 ] ||
    die "crash states: $in_use with bitmaps in use, $consistent consistent"

echo "$crash_states_checked crash states ($saw_old old, $saw_new new; $in_use in use, $consistent consistent)"
passed
