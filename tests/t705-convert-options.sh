# convert options qemu-img users type: -B FILE -F FMT (the new target is
# an overlay of FILE holding only what differs from it), -S SIZE (the
# sparse detection unit), -r RATE (rate limit), -o help.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# A full backup and the disk a day later.
ok qemu-img create -q -f qcow2 full.qcow2 8M
ok qemu-io -c 'write -P 1 0 4M' -c 'write -P 2 6M 1M' full.qcow2
cp full.qcow2 disk.qcow2
ok qemu-io -c 'write -P 3 1M 64k' -c 'write -z 6M 64k' -c 'write -P 4 7M 64k' \
    -c 'write -P 1 2M 64k' disk.qcow2
ok imgtool convert -O qcow2 -B full.qcow2 -F qcow2 disk.qcow2 restore.qcow2
same_content disk.qcow2 restore.qcow2
qemu_clean restore.qcow2
expect_eq "$(qemu-img info --output=json restore.qcow2 | grep -E '"(backing-filename|backing-filename-format)"' | tr -d ' ')" \
    "$(printf '"backing-filename-format":"qcow2",\n"backing-filename":"full.qcow2",')" "backing file"
# Only the changes are in the overlay (the rewrite of 2M with the same
# bytes is not); the zeroed run reads as zeroes over the backing data.
expect_eq "$(qemu-img map --output=json restore.qcow2 | grep '"depth": 0' | sed 's/, "offset": [0-9]*//')" \
'{ "start": 1048576, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true},
{ "start": 6291456, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false},
{ "start": 7340032, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true},' \
    "overlay extents"
# -B into a raw target, with -n or -c: refused, nothing created.
expect_status 1 imgtool convert -O raw -B full.qcow2 disk.qcow2 x.raw
[ ! -e x.raw ] || die "-B into raw created a file"
expect_status 1 imgtool convert -O qcow2 -c -B full.qcow2 disk.qcow2 x.qcow2
expect_status 1 imgtool convert -O qcow2 -F qcow2 disk.qcow2 x.qcow2
expect_match "$(err)" "-F needs a backing file"

# -S: zeroes inside data are holes in units of SIZE; qemu-img's rules.
ok qemu-img create -q -f raw z.raw 1M
ok qemu-io -f raw -c 'write -P 9 0 4k' -c 'write -P 0 4k 60k' -c 'write -P 9 64k 4k' z.raw
ok imgtool convert -f raw -O raw -S 4k z.raw s4k.raw
ok imgtool convert -f raw -O raw -S 128k z.raw s128k.raw
same_content -f raw -F raw z.raw s4k.raw
same_content -f raw -F raw z.raw s128k.raw
for u in 4k 128k; do
    ok qemu-img convert -f raw -O raw -S $u z.raw q$u.raw
    expect_eq "$(qemu-img map -f raw --output=json s$u.raw)" \
        "$(qemu-img map -f raw --output=json q$u.raw)" "-S $u: holes as qemu-img makes them"
done
expect_match "$(qemu-img map -f raw --output=json s4k.raw | sed -n 2p)" \
    '"start": 4096, "length": 61440, .*"zero": true' "-S 4k: the zeroes are a hole"
expect_status 1 imgtool convert -f raw -O raw -S 1000 z.raw x.raw
expect_match "$(err)" "Valid sizes are multiples of 512 up to 16777216"

# -r: a rate limit (the copy stays correct; its duration is not tested).
ok imgtool convert -r 100M -O raw disk.qcow2 rate.raw
same_content disk.qcow2 rate.raw

# -o help lists the target format's options and converts nothing.
ok imgtool convert -O qcow2 -o help
expect_eq "$(out | head -n 1)" "Supported qcow2 options:" "-o help"
expect_match "$(out)" "cluster_size=<size> +- qcow2 cluster size"
passed
