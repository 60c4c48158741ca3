# Bitmaps written by QEMU (qemu-img bitmap --add, dirtied by qemu-io) read
# back in imgtool with exactly the dirty extents QEMU itself reports through
# qemu-nbd -B and nbdinfo --map, for granularities from 512 bytes to 64 MiB,
# on a disk whose size is not a multiple of the granularity.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/bitmap-lib.sh"

ok qemu-img create -q -f qcow2 a.qcow2 $bitmap_disk_size
for g in 512 4k 64k 1M 64M; do
    ok qemu-img bitmap --add -g $g a.qcow2 g$g
done
ok qemu-img bitmap --add --disable a.qcow2 off
ok qemu-io -f qcow2 "${bitmap_writes[@]}" a.qcow2

# QEMU's view and imgtool's agree for every granularity; for 64k also with
# the extents worked out by hand (each write widened to whole granules, the
# last granule ending at the end of the disk).
for g in 512 4k 1M 64M; do
    same_dirty a.qcow2 g$g
done
same_dirty a.qcow2 g64k "$bitmap_writes_64k"
same_dirty a.qcow2 off ""
same_dirty a.qcow2 g64M "0 134217728
201326592 134217728
536870912 335544320
1073741824 1536"

# --list: granularity, flags and the dirty byte count as QEMU counts it
# (query-block "count": whole granules, a partial last one included).
ok imgtool bitmap --list --output=json a.qcow2
list=$(out | tr -d ' \n')
expect_match "$list" '^\[\{"name":"g512","granularity":512,"flags":\["auto"\],"dirty-bytes":[0-9]+\},'
need qemu-storage-daemon
qemu_counts=$(printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-named-block-nodes"}' \
                  '{"execute":"quit"}' |
              qemu-storage-daemon --blockdev driver=file,filename=a.qcow2,node-name=f \
                  --blockdev driver=qcow2,file=f,node-name=q,read-only=on \
                  --chardev stdio,id=c --monitor chardev=c |
              grep -o '"name": "[^"]*", [^}]*"count": [0-9]*' |
              sed 's/"name": "\([^"]*\)".*"count": \([0-9]*\)/\1 \2/')
for g in 512 4k 64k 1M 64M; do
    sum=$(awk -v n=g$g '$1 == n { print $2 }' <<<"$qemu_counts")
    [ -n "$sum" ] || die "no QEMU count for g$g: $qemu_counts"
    gran=$(qemu-img info --output=json a.qcow2 | tr -d ' \n' |
           grep -o "\"name\":\"g$g\",\"granularity\":[0-9]*" | sed 's/.*://')
    expect_match "$list" "\\{\"name\":\"g$g\",\"granularity\":$gran,\"flags\":\\[\"auto\"\\],\"dirty-bytes\":$sum\\}" "--list entry for g$g"
done
expect_match "$list" '\{"name":"off","granularity":65536,"flags":\[\],"dirty-bytes":0\}\]$'
ok imgtool bitmap --list a.qcow2
expect_eq "$(out | sed -n 4p)" "g64k                    65536  auto                316801024"

# info shows the bitmaps exactly as qemu-img info does, human and json.
# (Byte for byte, including QEMU's layout of an empty "flags": [ ].)
expect_eq "$(imgtool info --output=json a.qcow2 | sed -n '/"bitmaps"/,/"refcount-bits"/p')" \
          "$(qemu-img info --output=json a.qcow2 | sed -n '/"bitmaps"/,/"refcount-bits"/p')" \
          "info --output=json bitmaps"
expect_match "$(qemu_bitmaps a.qcow2)" '^\[\{"flags":\["auto"\],"name":"g512","granularity":512\},'
ok imgtool info a.qcow2
expect_eq "$(out | sed -n '/^    bitmaps:/,/^    refcount bits/p')" \
          "$(qemu-img info a.qcow2 | sed -n '/^    bitmaps:/,/^    refcount bits/p')" "human info"

# 512-byte clusters: a bitmap table of many entries, data clusters of 2 MiB
# of disk each.
ok qemu-img create -q -f qcow2 -o cluster_size=512 small.qcow2 64M
ok qemu-img bitmap --add -g 512 small.qcow2 fine
ok qemu-img bitmap --add -g 4k small.qcow2 b
ok qemu-io -f qcow2 -c 'write 1M 3M' -c 'write 2047k 1k' -c 'write 63M 1M' -c 'write -z 10M 5000' small.qcow2
same_dirty small.qcow2 fine "1048576 3145728
10485760 5120
66060288 1048576"
same_dirty small.qcow2 b

# imgtool keeps dirtying QEMU's bitmaps, and QEMU reads the result.
ok imgtool io -c 'write 40M 1' -c 'write -z 20M 8k' -c 'discard 30M 512' small.qcow2
same_dirty small.qcow2 fine "1048576 3145728
10485760 5120
20971520 8192
31457280 512
41943040 512
66060288 1048576"
same_dirty small.qcow2 b
qemu_clean small.qcow2
qemu_clean a.qcow2
passed
