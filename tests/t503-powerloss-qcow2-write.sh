# qcow2 allocating writes survive power failure (issue 12 item 2): one
# "imgtool io" session writes new clusters (new L2 tables and a new
# refcount block among them), overwrites allocated ones, zeroes and
# discards, under the power-loss harness (tests/crash/README).  In every
# crash state qemu-img check finds no corruption (leaks are allowed), and
# each cluster of the disk reads either what it held before the session or
# what the session wrote, never anything else (such as zeroes where the
# backing file's data was, or another cluster's data).
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/crash-lib.sh"

# 4 KiB clusters: an L2 table maps 2 MiB, a refcount block 8 MiB of file.
ok qemu-img create -q -f raw "$T/backing.raw" 24M
ok qemu-io -f raw -c 'write -P 0x11 0 24M' "$T/backing.raw"
ok qemu-img create -q -f qcow2 -o cluster_size=4k -b "$T/backing.raw" -F raw "$D/disk.qcow2"
ok qemu-io -f qcow2 -c 'write -P 0x22 0 256k' -c 'write -P 0x23 4M 64k' "$D/disk.qcow2"
ok qemu-img convert -O raw "$D/disk.qcow2" "$T/old.raw"

session=(-c 'write -P 0x33 64k 128k' -c 'write -P 0x34 2M 1M' -c 'write -P 0x35 4M 8k'
         -c 'write -P 0x36 9M 6M' -c 'write -z 20M 64k' -c 'discard 16k 8k'
         -c 'write -P 0x37 23M 1M')
ok crash_run session "$IMGTOOL" io "${session[@]}" "$D/disk.qcow2"
ok qemu-img convert -O raw "$D/disk.qcow2" "$T/new.raw"
qemu_clean "$D/disk.qcow2"

check_state() {
    crash_fs_check "$S/disk.qcow2"
    ok qemu-img convert -O raw "$S/disk.qcow2" "$T/state.raw"
    checks=$((checks + 1))
    "$CRASH_TOOLS/crashreplay" oldornew "$T/state.raw" "$T/old.raw" "$T/new.raw" 4096 \
        >"$T/.bad" || die "$crash_where: clusters at $(head -n 5 "$T/.bad" | paste -sd " ") hold" \
        "neither the old nor the new data"
}
crash_states session 16 2 check_state
echo "$crash_states_checked crash states"
passed
