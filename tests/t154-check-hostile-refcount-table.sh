# Repairs of hostile images stay bounded (issue 12 item 12): a 2 KiB image
# whose refcount table names a refcount block at 512 GiB or at 2^55 makes
# qemu-img check -r all grow the file to 512 GiB (sparse) and take 2 GiB of
# memory.  imgtool does not grow the file for a block that far past
# everything the image references; it says so in one line and rebuilds the
# refcount structure instead, and the result is clean for qemu-img.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# hostile NAME OFFSET: a 64k image with 512-byte clusters and some data,
# whose refcount table entry 1 names a block at OFFSET.
hostile() {
    rm -f "$1"
    ok qemu-img create -q -f qcow2 -o cluster_size=512 "$1" 64k
    ok qemu-io -f qcow2 -c 'write -P 0x5c 0 4k' -c 'write -P 0x5d 60k 4k' "$1"
    python3 - "$1" "$2" <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
rt = struct.unpack(">Q", f.read(56)[48:56])[0]
f.seek(rt + 8)
f.write(struct.pack(">Q", int(sys.argv[2], 0)))
PY
}

for far in 0x7ffffffe00 0x80000000000000 0xfffffffffffe00; do
    hostile h.qcow2 $far
    size=$(stat -c %s h.qcow2)
    ok qemu-io -f qcow2 -c 'read -P 0x5c 0 4k' -c 'read -P 0x5d 60k 4k' h.qcow2
    expect_status 2 imgtool check h.qcow2
    expect_match "$(err)" "^ERROR refcount block 1 is outside image$" "check of a block at $far"
    ok imgtool check -r all h.qcow2
    expect_match "$(err)" "ERROR refcount block at $(printf '%#x' $far) is far past the end of the file \($size bytes, references up to [0-9]+\): not growing the file for it, rebuilding the refcount structure instead" \
        "repair of a block at $far"
    expect_match "$(err)" "^Rebuilding refcount structure$" "rebuild for a block at $far"
    new_size=$(stat -c %s h.qcow2)
    checks=$((checks + 1))
    [ "$new_size" -lt $((size + 64 * 1024)) ] ||
        die "check -r all grew the file from $size to $new_size bytes (block at $far)"
    qemu_clean h.qcow2
    ok qemu-io -f qcow2 -c 'read -P 0x5c 0 4k' -c 'read -P 0x5d 60k 4k' h.qcow2
done

# A refcount block just past the end of the file (a truncated image) is
# still repaired as QEMU repairs it: the file grows to hold it.
hostile t.qcow2 0
size=$(stat -c %s t.qcow2)
python3 - t.qcow2 $(( (size + 511) / 512 * 512 )) <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
rt = struct.unpack(">Q", f.read(56)[48:56])[0]
f.seek(rt + 8)
f.write(struct.pack(">Q", int(sys.argv[2])))
PY
cp t.qcow2 q.qcow2
ok imgtool check -r all t.qcow2
expect_match "$(err)" "^Repairing refcount block 1 is outside image$" "repair of a block just past the end"
expect_status 0 qemu-img check -r all q.qcow2
expect_eq "$(stat -c %s t.qcow2)" "$(stat -c %s q.qcow2)" "file size after growing for the block, as qemu-img"
qemu_clean t.qcow2
passed
