# imgtool info prints the same text as qemu-img info, human-readable and
# --output=json, for raw, qcow2 with a backing file, internal snapshots,
# persistent bitmaps and a backing chain.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

ok qemu-img create -q -f raw disk.raw 10M
ok qemu-io -f raw -c 'write -P 1 1M 64k' disk.raw
ok qemu-img create -q -f qcow2 -b disk.raw -F raw top.qcow2
ok qemu-io -c 'write -P 2 0 64k' top.qcow2
ok qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k v2.qcow2 1G
ok qemu-img create -q -f qcow2 snaps.qcow2 16M
ok qemu-io -c 'write -P 3 0 1M' snaps.qcow2
ok qemu-img snapshot -c first snaps.qcow2
ok qemu-img snapshot -c 'a longer snapshot name' snaps.qcow2
ok qemu-img create -q -f qcow2 bitmaps.qcow2 16M
ok qemu-img bitmap --add bitmaps.qcow2 b1
ok qemu-img bitmap --add -g 1M bitmaps.qcow2 b2
ok qemu-img bitmap --disable bitmaps.qcow2 b2

for img in disk.raw top.qcow2 v2.qcow2 snaps.qcow2 bitmaps.qcow2; do
    ok imgtool info "$img"
    expect_eq "$(out)" "$(qemu-img info "$img")" "imgtool info $img"
    ok imgtool info --output=json "$img"
    expect_eq "$(out)" "$(qemu-img info --output=json "$img")" "imgtool info --output=json $img"
done
ok imgtool info --backing-chain top.qcow2
expect_eq "$(out)" "$(qemu-img info --backing-chain top.qcow2)" "imgtool info --backing-chain"
ok imgtool info --backing-chain --output=json top.qcow2
expect_eq "$(out)" "$(qemu-img info --backing-chain --output=json top.qcow2)" "imgtool info --backing-chain --output=json"
passed
