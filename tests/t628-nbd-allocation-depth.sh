# qemu:allocation-depth: from an NBD export of a qcow2 chain (qemu-nbd -A,
# qemu-storage-daemon allocation-depth=on), convert -o backing_file and
# mirror --sync=top with a backing file copy what the export's top layer
# allocates, as they do from the top image itself: the same allocation,
# zero clusters included, and the same data.  A server without the
# context (nbdkit) gets a full copy, which reads the same.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need qemu-img qemu-io qemu-nbd qemu-storage-daemon nbdkit
. "$here/nbd-lib.sh"

ok qemu-img create -q -f qcow2 base.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 2M 1M' base.qcow2
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
ok qemu-io -f qcow2 -c 'write -P 3 512k 1M' -c 'write -z 2304k 64k' -c 'write -P 4 3584k 64k' \
    top.qcow2
# The allocation: map runs without host offsets, adjacent runs alike merged
# (copies write out of order, so host clusters need not follow each other).
nooffset() {
    qemu-img map --output=json "$1" |
        sed -n 's/.*"start": \([0-9]*\), "length": \([0-9]*\), \(.*"data": [a-z]*\).*/\1 \2 \3/p' |
        awk '{ rest = $0; sub(/^[0-9]+ [0-9]+ /, "", rest) }
             NR > 1 && rest == r { len += $2; next }
             NR > 1 { print start, len, r } { start = $1; len = $2; r = rest }
             END { print start, len, r }'
}
# The reference: the same copy from the top image itself.
ok imgtool convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 top.qcow2 ref.qcow2
ref_map=$(nooffset ref.qcow2)
expect_match "$ref_map" '2359296 65536 "depth": 0, "present": true, "zero": true' \
    "the top layer's zero cluster in the reference"

start_qemu_nbd a.sock -r -A -f qcow2 top.qcow2; ua=$NBD_URI
ok imgtool convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 "$ua" a.qcow2
expect_eq "$(nooffset a.qcow2)" "$ref_map" "allocation of the copy from qemu-nbd -A"
same_content top.qcow2 a.qcow2
qemu_clean a.qcow2
ok imgtool mirror --sync=top -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 "$ua" m.qcow2
expect_eq "$(nooffset m.qcow2)" "$ref_map" "allocation of mirror --sync=top from qemu-nbd -A"
same_content top.qcow2 m.qcow2

# qemu-storage-daemon's export with allocation-depth=on.
qemu-storage-daemon --blockdev driver=file,filename="$T/top.qcow2",node-name=f,read-only=on \
    --blockdev driver=qcow2,file=f,node-name=top,read-only=on \
    --nbd-server addr.type=unix,addr.path="$T/q.sock" \
    --export type=nbd,id=e,node-name=top,name=top,allocation-depth=on >"$T/qsd.log" 2>&1 &
NBD_PIDS+=($!)
uq=$(unix_uri "$T/q.sock" top)
wait_nbd "$uq"
ok imgtool convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 "$uq" q.qcow2
expect_eq "$(nooffset q.qcow2)" "$ref_map" "allocation of the copy from qemu-storage-daemon"
same_content top.qcow2 q.qcow2

# Without the context (qemu-nbd without -A, nbdkit): everything is the top
# layer's, so the data of both layers is copied (zero runs read as zeroes
# through the backing file already), and the copy reads as the export.
start_qemu_nbd n.sock -r -f qcow2 top.qcow2; un=$NBD_URI
ok imgtool convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 "$un" n.qcow2
same_content top.qcow2 n.qcow2
expect_match "$(nooffset n.qcow2 | head -n 1)" '0 1572864 "depth": 0, "present": true, "zero": false, "data": true' \
    "the backing file's data copied without allocation depth"
ok qemu-img convert -O raw top.qcow2 top.raw
start_nbdkit k.sock file "$T/top.raw"; uk=$NBD_URI
ok imgtool convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 "$uk" k.qcow2
same_content top.qcow2 k.qcow2
passed
