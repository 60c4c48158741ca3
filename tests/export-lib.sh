# Helpers for the backup chain tests (tests/t43*-*.sh), sourced after
# lib.sh.
need qemu-img qemu-io

# full_then_mon: a 4 MiB disk vm.qcow2 with tracking bitmap n, its full
# backup full.qcow2, a day's write, and the incremental backup mon.qcow2.
full_then_mon() {
    ok imgtool create -q -f qcow2 vm.qcow2 4M
    ok qemu-io -c 'write -P 1 0 4M' vm.qcow2
    ok imgtool export -q -B n vm.qcow2 full.qcow2
    ok qemu-io -c 'write -P 2 0 64k' vm.qcow2
    ok imgtool export -q -s incremental -B n -b full.qcow2 vm.qcow2 mon.qcow2
}
