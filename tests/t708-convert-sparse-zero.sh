# convert -S SIZE as qemu-img's: the sparse detection unit, and -S 0 (no
# detection: every byte of the target allocated as data, the source's
# zero clusters and holes too), for raw and qcow2 targets, new or -n.
# The allocation of each result is compared with qemu-img's (qemu-img map
# without host offsets, adjacent runs merged).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io


# A raw file with data, written zeroes and a hole; a qcow2 with data, a
# zero cluster, a cluster of written zeroes and unallocated clusters.
ok qemu-img create -q -f raw z.raw 1M
ok qemu-io -f raw -c 'write -P 9 0 4k' -c 'write -P 0 4k 60k' -c 'write -P 9 64k 4k' z.raw
ok qemu-img create -q -f qcow2 s.qcow2 1M
ok qemu-io -c 'write -P 1 0 64k' -c 'write -z 128k 64k' -c 'write -P 0 256k 64k' s.qcow2

for src in z.raw s.qcow2; do
    for fmt in raw qcow2; do
        for S in 0 512 4k 128k; do
            ok qemu-img convert -O $fmt -S $S $src q.$fmt
            ok imgtool convert -O $fmt -S $S $src i.$fmt
            same_content $src i.$fmt
            expect_eq "$(map_alloc $fmt i.$fmt)" "$(map_alloc $fmt q.$fmt)" "$src -> $fmt -S $S: allocation"
            rm -f q.$fmt i.$fmt
        done
    done
done
# -S 0 allocates everything, holes of the source included.
ok imgtool convert -O qcow2 -S 0 s.qcow2 full.qcow2
expect_eq "$(map_alloc qcow2 full.qcow2)" "0 1048576 false true" "-S 0: fully allocated qcow2"
# ... also into an existing sparse target (-n).
truncate -s 1M qn.raw in.raw
ok qemu-img convert -n -O raw -S 0 s.qcow2 qn.raw
ok imgtool convert -n -O raw -S 0 s.qcow2 in.raw
expect_eq "$(map_alloc raw in.raw)" "$(map_alloc raw qn.raw)" "-n -S 0: allocation"
expect_eq "$(map_alloc raw in.raw)" "0 1048576 false true" "-n -S 0: fully allocated raw"
same_content -f qcow2 -F raw s.qcow2 in.raw

# What qemu-img refuses, with its message.
for bad in 1000 32M; do
    expect_status 1 qemu-img convert -O raw -S $bad z.raw x.raw
    q=$(err)
    expect_status 1 imgtool convert -O raw -S $bad z.raw x.raw
    expect_eq "$(err | head -n 1)" "${q/qemu-img:/imgtool convert:}" "-S $bad refused"
done
[ ! -e x.raw ] || die "a refused -S created the target"
passed
