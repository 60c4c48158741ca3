# Chain operations survive power failure (issue 12 item 2, "nothing is
# lost"): rebase (safe mode) and commit never leave an image that reads
# other data than before.  Each runs once under the power-loss harness
# (tests/crash/README); in every crash state qemu-img check finds no
# corruption, and the image (through whatever backing file its header
# names in that state) reads as it did before.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/crash-lib.sh"

# base <- mid <- top, each layer writing part of the disk; new.raw holds
# other data, to rebase top onto.
ok qemu-img create -q -f qcow2 -o cluster_size=4k "$D/base.qcow2" 4M
ok qemu-io -f qcow2 -c 'write -P 1 0 4M' "$D/base.qcow2"
ok qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 "$D/mid.qcow2"
ok qemu-io -f qcow2 -c 'write -P 2 1M 1M' -c 'write -z 3M 64k' "$D/mid.qcow2"
ok qemu-img create -q -f qcow2 -o cluster_size=4k -b mid.qcow2 -F qcow2 "$D/top.qcow2"
ok qemu-io -f qcow2 -c 'write -P 3 1536k 8k' -c 'write -P 4 3500k 100k' "$D/top.qcow2"
ok qemu-img create -q -f raw "$D/new.raw" 4M
ok qemu-io -f raw -c 'write -P 5 0 4M' "$D/new.raw"
ok qemu-img convert -O raw "$D/top.qcow2" "$T/top.raw"
ok qemu-img convert -O raw "$D/mid.qcow2" "$T/mid.raw"

# IMG in this crash state reads as WANT (a raw file).
reads_as() {
    crash_fs_check "$S/$1"
    checks=$((checks + 1))
    qemu-img compare -f qcow2 -F raw "$S/$1" "$2" >"$T/.cmp" 2>&1 ||
        die "$crash_where: $1 no longer reads as before: $(cat "$T/.cmp")"
}

# 1. rebase top from mid onto new.raw: top must read the same throughout.
ok crash_run rebase "$IMGTOOL" rebase -b new.raw -F raw "$D/top.qcow2"
ok qemu-img compare -F raw "$D/top.qcow2" "$T/top.raw"
check_rebase() { reads_as top.qcow2 "$T/top.raw"; }
crash_states rebase 12 2 check_rebase

# 2. Back to the chain base <- mid <- top, then commit mid into base: top
# and mid keep reading the same.
ok qemu-img rebase -u -b mid.qcow2 -F qcow2 "$D/top.qcow2"
ok imgtool rebase -b mid.qcow2 -F qcow2 "$D/top.qcow2"
ok qemu-img compare "$D/top.qcow2" "$T/top.raw"
ok crash_run commit "$IMGTOOL" commit "$D/mid.qcow2"
check_commit() { reads_as mid.qcow2 "$T/mid.raw"; reads_as top.qcow2 "$T/top.raw"; }
crash_states commit 12 2 check_commit

echo "$crash_states_checked crash states"
passed
