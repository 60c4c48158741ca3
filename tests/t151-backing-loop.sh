# A backing chain that loops (an image backed by itself, A -> B -> A, or
# back through another name of the same file) is reported as a loop, with
# exit status 1, before the loop is opened again: not as a lock conflict
# (exit 75 from export, "try again later"), and not after opening 256
# layers with their tables (issue 12 item 12).
. "$(dirname "$0")/lib.sh"
need qemu-img

# 1. An image backed by itself.
ok qemu-img create -q -f qcow2 a.qcow2 1M
ok qemu-img rebase -q -u -F qcow2 -b a.qcow2 a.qcow2
loop_msg="imgtool: a.qcow2: backing chain loops back to a.qcow2 (a.qcow2 -> a.qcow2)"
expect_status 1 imgtool io -c 'read 0 512' a.qcow2
expect_eq "$(err)" "$loop_msg" "io read on a self-backed image"
expect_status 1 imgtool io -c 'write 0 512' a.qcow2
expect_eq "$(err)" "$loop_msg" "io write on a self-backed image"
expect_status 1 imgtool convert -O raw a.qcow2 out.raw
expect_eq "$(err)" "$loop_msg" "convert of a self-backed image"
expect_status 1 imgtool info --backing-chain a.qcow2
expect_eq "$(err)" "$loop_msg" "info --backing-chain of a self-backed image"
expect_status 1 imgtool map a.qcow2
expect_eq "$(err)" "$loop_msg" "map of a self-backed image"
# export exits 1, not 75: retrying later cannot help.
expect_status 1 imgtool export -B nightly a.qcow2 backup.qcow2
expect_eq "$(err)" "$loop_msg" "export of a self-backed image"
[ ! -e backup.qcow2 ] || die "export left backup.qcow2 behind"

# 2. A -> B -> A, with large L1 tables (16 MiB each): opening the loop 256
# times over would take gigabytes.
ok qemu-img create -q -f qcow2 -o cluster_size=64k -u -b b.qcow2 -F qcow2 c.qcow2 1P
ok qemu-img create -q -f qcow2 -o cluster_size=64k -u -b c.qcow2 -F qcow2 b.qcow2 1P
expect_status 1 imgtool info --backing-chain c.qcow2
expect_eq "$(err)" \
    "imgtool: c.qcow2: backing chain loops back to c.qcow2 (c.qcow2 -> b.qcow2 -> c.qcow2)" \
    "a loop of two images"
expect_status 1 imgtool convert -O raw b.qcow2 out.raw
expect_eq "$(err)" \
    "imgtool: b.qcow2: backing chain loops back to b.qcow2 (b.qcow2 -> c.qcow2 -> b.qcow2)" \
    "the same loop from the other image"
expect_status 1 imgtool export -B nightly c.qcow2 backup.qcow2
expect_match "$(err)" "loops back to c.qcow2" "export of a looping chain"

# 3. The loop closes through another name of the same file (a symbolic
# link): the identity of the file counts, not its name.
ok qemu-img create -q -f qcow2 d.qcow2 1M
ln -s d.qcow2 link.qcow2
ok qemu-img create -q -f qcow2 -u -b link.qcow2 -F qcow2 e.qcow2 1M
ok qemu-img rebase -q -u -F qcow2 -b e.qcow2 d.qcow2
expect_status 1 imgtool io -c 'read 0 512' e.qcow2
expect_eq "$(err)" \
    "imgtool: e.qcow2: backing chain loops back to e.qcow2 (e.qcow2 -> link.qcow2 -> e.qcow2)" \
    "a loop through a symbolic link"

# 4. A chain that does not loop but names the same backing file twice is
# fine: the same base under two overlays.
ok qemu-img create -q -f qcow2 base.qcow2 1M
ok qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' base.qcow2
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
ok qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
ok imgtool io -c 'read -P 0x5a 0 64k' top.qcow2
passed
