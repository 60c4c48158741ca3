# Write-path integrity for the metadata writers outside the data path
# (issue 12 item 7): internal snapshots write an L1 copy, the active L1
# table, a new snapshot table and header fields.  On an image whose
# refcounts call a metadata cluster free, the allocator hands that cluster
# out; the write must be refused with QEMU's one-line corruption message,
# the corrupt bit set, and nothing else in the image damaged (qemu-img
# check reports exactly what it reported before).  qemu-img refuses both
# cases the same way.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# zero_refcount IMG WHAT: set the refcount of the cluster holding WHAT
# ("l2": the first L2 table, "snapshots": the snapshot table) to 0.
zero_refcount() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(104)
l1, rt = struct.unpack(">Q", h[40:48])[0], struct.unpack(">Q", h[48:56])[0]
snapshots = struct.unpack(">Q", h[64:72])[0]
f.seek(rt); rb = struct.unpack(">Q", f.read(8))[0]
f.seek(l1); l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
what = {"l2": l2, "snapshots": snapshots}[sys.argv[2]]
f.seek(rb + 2 * (what >> 16)); f.write(b"\0\0")
print("%#x" % what)
PY
}
# unchanged BEFORE AFTER [FREE_START FREE_END]: the files differ only in
# the corrupt bit (byte 80 of the header, 0 -> 2) and inside the free
# clusters [FREE_START, FREE_END) that the refused operation had already
# filled legitimately.
unchanged() {
    local diff
    diff=$(cmp -l "$1" "$2" | awk -v a="${3:-0}" -v b="${4:-0}" \
        '$1 - 1 < a || $1 - 1 >= b { printf "%d:%s:%s ", $1, $2, $3 }')
    checks=$((checks + 1))
    [ "$diff" = "80:0:2 " ] || die "$2 changed beyond the corrupt bit: $diff"
}
# same_check BEFORE AFTER: qemu-img check reports the same problems (the
# refused write added none).
same_check() {
    local a b
    a=$(qemu-img check "$1" 2>&1 | grep -v '^Image end offset'); b=$(qemu-img check "$2" 2>&1 |
        grep -v '^Image end offset')
    expect_eq "$b" "${a//$1/$2}" "qemu-img check of $2 after the refused write"
}
corrupt_flag() {
    qemu-img info --output=json "$1" | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"]["corrupt"])'
}
refused() {
    expect_eq "$(err)" "imgtool: Could not create snapshot 's$1': qcow2: Marking image as corrupt: img.qcow2: Preventing invalid write on metadata (overlaps with $2) at offset $3 bytes; further writes are refused" \
        "snapshot -c onto the $2"
    expect_eq "$(corrupt_flag img.qcow2)" True "corrupt flag after a refused snapshot"
}

new_image() {
    rm -f img.qcow2
    ok qemu-img create -q -f qcow2 img.qcow2 4M
    ok qemu-io -f qcow2 -c 'write -P 0x11 0 192k' img.qcow2
}
# damaged WHAT: zero the refcount of WHAT (at offset $2), keep copies.
damaged() {
    expect_eq "$(zero_refcount img.qcow2 "$1")" "$2" "$1 of the test image"
    cp img.qcow2 before.qcow2
    cp img.qcow2 qemu.qcow2
}

# 1. snapshot -c: the copy of the active L1 table would land on the L2
# table, whose refcount says free.
new_image
damaged l2 0x40000
expect_status 1 qemu-img snapshot -c s1 qemu.qcow2
expect_match "$(err)" "overlaps with active L2 table" "qemu-img snapshot -c onto the L2 table"
expect_status 1 imgtool snapshot -c s1 img.qcow2
refused 1 "active L2 table" "0x40000, 8"
unchanged before.qcow2 img.qcow2
same_check before.qcow2 img.qcow2
expect_status 1 imgtool snapshot -c s1 img.qcow2
expect_match "$(err)" "image is marked corrupt" "a second snapshot -c"
unchanged before.qcow2 img.qcow2

# 2. snapshot -c: the new snapshot table would land on the current one
# (its refcount says free); the L1 copy goes first, into a cluster that is
# really free (the table that the second snapshot replaced), as in QEMU.
new_image
ok qemu-img snapshot -c s1 img.qcow2
ok qemu-img snapshot -c s2 img.qcow2
damaged snapshots 0xb0000
expect_status 1 qemu-img snapshot -c s3 qemu.qcow2
expect_match "$(err)" "overlaps with snapshot table" "qemu-img snapshot -c onto the snapshot table"
expect_status 1 imgtool snapshot -c s3 img.qcow2
refused 3 "snapshot table" "0xb0000, 211"
unchanged before.qcow2 img.qcow2 $((0x90000)) $((0xa0000))
same_check before.qcow2 img.qcow2
expect_eq "$(qemu-img snapshot -l img.qcow2 | awk 'NR > 2 { printf "%s ", $2 }')" "s1 s2 " \
    "snapshots after the refused snapshot -c"
passed
