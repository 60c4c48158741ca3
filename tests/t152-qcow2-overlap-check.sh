# Write-path integrity, as QEMU's qcow2 metadata overlap check (issue 12
# item 7): a write that would land on metadata (a damaged L2 entry pointing
# into the L1 table or a refcount block, a refcount that calls a metadata
# cluster free) is refused, the image is marked corrupt (qemu-img info:
# corrupt: true), one line says so, and nothing is overwritten.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# damage IMG: print "L1 REFTABLE L2 REFBLOCK" offsets of IMG (64k clusters,
# one L2 table), then apply the python statements in $DAMAGE with them.
damage() {
    python3 - "$1" <<PY
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(104)
l1, rt = struct.unpack(">Q", h[40:48])[0], struct.unpack(">Q", h[48:56])[0]
f.seek(l1); l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
f.seek(rt); rb = struct.unpack(">Q", f.read(8))[0]
def l2e(i, v): f.seek(l2 + 8 * i); f.write(struct.pack(">Q", v))
COPIED = 1 << 63
$DAMAGE
print("%#x %#x %#x %#x" % (l1, rt, l2, rb))
PY
}
# unchanged BEFORE AFTER: the files differ at most in the incompatible
# feature bits (header bytes 72-79), where only the corrupt bit was set.
unchanged() {
    local diff
    diff=$(cmp -l "$1" "$2" | awk '{ printf "%d:%s:%s ", $1, $2, $3 }')
    checks=$((checks + 1))
    [ "$diff" = "80:0:2 " ] || die "$2 changed beyond the corrupt bit: $diff"
}
corrupt_flag() {
    qemu-img info --output=json "$1" | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"]["corrupt"])'
}

new_image() {
    rm -f "$1"
    ok qemu-img create -q -f qcow2 "$1" 4M
    ok qemu-io -f qcow2 -c 'write -P 0x11 0 192k' "$1"
}

# 1. An L2 entry that points at the refcount block (a whole-cluster write
# in place), one that points into the L1 table (a partial write in place),
# one that points at the L2 table itself.
new_image img.qcow2
DAMAGE='l2e(0, COPIED | rb); l2e(1, COPIED | l1); l2e(2, COPIED | l2)'
read -r L1 RT L2 RB <<<"$(damage img.qcow2)"
expect_eq "$L1 $RT $L2 $RB" "0x30000 0x10000 0x40000 0x20000" "layout of the test image"
cp img.qcow2 before.qcow2
expect_status 1 imgtool io -c 'write -P 0x55 0 64k' img.qcow2
expect_eq "$(err)" "imgtool: qcow2: Marking image as corrupt: img.qcow2: Preventing invalid write on metadata (overlaps with refcount block) at offset 0x20000, 65536 bytes; further writes are refused" \
    "a write onto the refcount block"
expect_eq "$(corrupt_flag img.qcow2)" True "corrupt flag after the refused write"
unchanged before.qcow2 img.qcow2
# Marked corrupt: the image is not opened for writing any more, as QEMU.
expect_status 1 imgtool io -c 'write -P 0x55 1M 64k' img.qcow2
expect_match "$(err)" "image is marked corrupt" "opening a corrupt image for writing"
expect_status 1 qemu-io -f qcow2 -c 'write -P 0x55 1M 64k' img.qcow2

# one_write 'IO COMMAND' KIND 'OFFSET, LENGTH': on a freshly damaged image,
# the write is refused as landing on KIND.
one_write() {
    new_image img.qcow2
    damage img.qcow2 >/dev/null
    cp img.qcow2 before.qcow2
    expect_status 1 imgtool io -c "$1" img.qcow2
    expect_eq "$(err)" "imgtool: qcow2: Marking image as corrupt: img.qcow2: Preventing invalid write on metadata (overlaps with $2) at offset $3 bytes; further writes are refused" \
        "'$1' onto the $2"
    expect_eq "$(corrupt_flag img.qcow2)" True "corrupt flag after a write onto the $2"
    unchanged before.qcow2 img.qcow2
}
one_write 'write -P 0x56 65636 4k' "active L1 table" "0x30064, 4096"
one_write 'write -P 0x57 128k 64k' "active L2 table" "0x40000, 65536"
one_write 'write -P 0x55 100 512' "refcount block" "0x20064, 512"

# 2. A refcount of 0 on the L1 table's cluster: the allocator would hand
# it out for new data.  The write is refused before it lands there.
new_image img.qcow2
DAMAGE='f.seek(rb + 2 * (l1 >> 16)); f.write(b"\0\0")'
damage img.qcow2 >/dev/null
cp img.qcow2 before.qcow2
expect_status 1 imgtool io -c 'write -P 0x58 2M 64k' img.qcow2
expect_eq "$(err)" "imgtool: qcow2: Marking image as corrupt: img.qcow2: Preventing invalid write on metadata (overlaps with active L1 table) at offset 0x30000, 65536 bytes; further writes are refused" \
    "an allocation onto the L1 table"
expect_eq "$(corrupt_flag img.qcow2)" True "corrupt flag after an allocation onto the L1 table"
unchanged before.qcow2 img.qcow2

# 3. Bitmap tables and the bitmap directory are metadata too: an L2 entry
# pointing at a bitmap table.
new_image img.qcow2
ok imgtool bitmap --add img.qcow2 b0
ok imgtool io -c 'write -P 0x12 256k 64k' img.qcow2
table=$(python3 - img.qcow2 <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
pos = struct.unpack(">I", d[100:104])[0]    # header length: extensions follow
while True:
    t, n = struct.unpack(">II", d[pos:pos + 8])
    if t == 0x23852875:
        diroff = struct.unpack(">Q", d[pos + 24:pos + 32])[0]
        print(struct.unpack(">Q", d[diroff:diroff + 8])[0])
        break
    pos += 8 + (n + 7) // 8 * 8
PY
)
DAMAGE="l2e(0, COPIED | $table)"
damage img.qcow2 >/dev/null
cp img.qcow2 before.qcow2
expect_status 1 imgtool io -c 'write -P 0x59 0 64k' img.qcow2
expect_match "$(err)" "overlaps with bitmap table\) at offset $(printf '%#x' "$table")" \
    "a write onto a bitmap table"
expect_eq "$(corrupt_flag img.qcow2)" True "corrupt flag after a write onto a bitmap table"
python3 - before.qcow2 img.qcow2 "$table" <<'PY' || die "the bitmap table was overwritten"
import sys
a, b, t = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read(), int(sys.argv[3])
sys.exit(a[t:t + 65536] != b[t:t + 65536])
PY
checks=$((checks + 1))

# 4. Undamaged images are written as before (the check costs no false
# alarm): a mix of writes, zero writes and discards, then qemu-img check.
new_image ok.qcow2
ok imgtool io -c 'write -P 0x21 1M 1M' -c 'write -z -u 0 64k' -c 'discard 64k 64k' \
    -c 'write -P 0x22 100k 300k' ok.qcow2
expect_eq "$(corrupt_flag ok.qcow2)" False "corrupt flag of an undamaged image"
qemu_clean ok.qcow2
passed
