# Diff images into existing targets (issue 12 item 4): mirror --sync=bitmap
# into a pre-created empty qcow2 target (with or without a backing file)
# writes the zeroed and discarded ranges of the source as zero clusters, as
# qemu-storage-daemon's blockdev-backup sync=bitmap does, so that the target
# rebased onto the full copy reads as the source; a raw target gets real
# zeroes.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
need qemu-img qemu-io qemu-storage-daemon python3

ok qemu-img create -q -f qcow2 src.qcow2 8M
ok qemu-io -f qcow2 -c 'write -P 1 0 8M' src.qcow2
ok qemu-img convert -O qcow2 src.qcow2 full.qcow2
ok qemu-img convert -O raw src.qcow2 full.raw
ok imgtool bitmap --add src.qcow2 b
ok qemu-io -f qcow2 -c 'write -z 1M 128k' -c 'discard 3M 192k' -c 'write -P 2 5M 64k' \
    -c 'write -z 7172k 8k' src.qcow2

# The extents of IMG's own layer (its backing file not opened) as qemu-img
# map says, host offsets left out.
top_map() {
    qemu-img map --output=json \
        "json:{\"driver\": \"qcow2\", \"backing\": null, \"file\": {\"driver\": \"file\", \"filename\": \"$1\"}}" |
        sed 's/, "offset": [0-9]*//'
}
want_map='[{ "start": 0, "length": 1048576, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 1048576, "length": 131072, "depth": 0, "present": true, "zero": true, "data": false},
{ "start": 1179648, "length": 1966080, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 3145728, "length": 196608, "depth": 0, "present": true, "zero": true, "data": false},
{ "start": 3342336, "length": 1900544, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 5242880, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true},
{ "start": 5308416, "length": 2031616, "depth": 0, "present": false, "zero": true, "data": false},
{ "start": 7340032, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true},
{ "start": 7405568, "length": 983040, "depth": 0, "present": false, "zero": true, "data": false}]'

# 1. What QEMU writes: blockdev-backup sync=bitmap into an empty qcow2 (on
# a copy of the source: the job is QEMU's, the bitmap is left alone).
cp src.qcow2 qsrc.qcow2
ok qemu-img create -q -f qcow2 qemu-diff.qcow2 8M
qemu-storage-daemon \
    --blockdev driver=file,filename=qsrc.qcow2,node-name=sf \
    --blockdev driver=qcow2,file=sf,node-name=src \
    --blockdev driver=file,filename=qemu-diff.qcow2,node-name=tf \
    --blockdev driver=qcow2,file=tf,node-name=tgt \
    --chardev socket,path=qmp.sock,server=on,wait=off,id=m --monitor chardev=m &
qsd=$!
trap 'kill $qsd 2>/dev/null; rm -rf "$T"' EXIT
ok python3 "$tests/bench/qmp-job.py" qmp.sock blockdev-backup \
    '{"job-id": "j", "device": "src", "target": "tgt", "sync": "bitmap", "bitmap": "b", "bitmap-mode": "never"}'
wait $qsd
expect_eq "$(top_map qemu-diff.qcow2)" "$want_map" "qemu-img map of QEMU's diff image"

# 2. imgtool into an empty qcow2 without a backing file: the same extents;
# rebased onto the full copy it reads as the source.
ok qemu-img create -q -f qcow2 diff.qcow2 8M
ok imgtool mirror -s bitmap -B b --bitmap-mode=never --mode=existing src.qcow2 diff.qcow2
expect_eq "$(top_map diff.qcow2)" "$want_map" "qemu-img map of imgtool's diff image"
qemu_clean diff.qcow2
ok qemu-img rebase -u -b full.qcow2 -F qcow2 diff.qcow2
same_content src.qcow2 diff.qcow2

# 3. Into an empty qcow2 backed by the full copy already, in the default
# target mode (existing): the same, and the chain reads as the source.
ok qemu-img create -q -f qcow2 -b full.qcow2 -F qcow2 backed.qcow2
ok imgtool mirror -s bitmap -B b --bitmap-mode=never src.qcow2 backed.qcow2
expect_eq "$(top_map backed.qcow2)" "$want_map" "qemu-img map of the backed diff image"
same_content src.qcow2 backed.qcow2
# ... and onto a full copy that holds other data there, too.
ok qemu-img rebase -u -b full.raw -F raw backed.qcow2
same_content src.qcow2 backed.qcow2

# 4. --target-is-zero does not turn the zeroes of a diff image into holes.
ok qemu-img create -q -f qcow2 diff2.qcow2 8M
ok imgtool mirror -s bitmap -B b --bitmap-mode=never --target-is-zero src.qcow2 diff2.qcow2
expect_eq "$(top_map diff2.qcow2)" "$want_map" "qemu-img map with --target-is-zero"

# 5. A raw copy of the full backup as the target: real zeroes.
cp full.raw copy.raw
ok imgtool mirror -s bitmap -B b --bitmap-mode=on-success src.qcow2 copy.raw
same_content -f qcow2 -F raw src.qcow2 copy.raw
passed
