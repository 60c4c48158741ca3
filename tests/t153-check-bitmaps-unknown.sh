# Repair never frees what another reader may still reference (issue 12
# item 10): a bitmap directory that QEMU accepts but imgtool cannot load (a
# bitmap name containing a NUL byte) is counted as QEMU counts it, so that
# `check -r all` frees none of its clusters and qemu-img check stays clean;
# a bitmaps extension that cannot be read at all makes check -r refuse to
# change any refcount, with a one-line reason, and the file stays as it was.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# patch_dir IMG OFFSET BYTES...: overwrite bytes of the first directory entry.
patch_dir() {
    python3 - "$@" <<'PY'
import struct, sys
path, at, data = sys.argv[1], int(sys.argv[2]), bytes(int(b, 0) for b in sys.argv[3:])
f = open(path, "r+b")
d = f.read(65536)
pos = struct.unpack(">I", d[100:104])[0]
while True:
    t, n = struct.unpack(">II", d[pos:pos + 8])
    if t == 0x23852875:
        diroff = struct.unpack(">Q", d[pos + 24:pos + 32])[0]
        break
    pos += 8 + (n + 7) // 8 * 8
f.seek(diroff + at)
f.write(data)
PY
}
ok qemu-img create -q -f qcow2 good.qcow2 4M
ok qemu-img bitmap --add good.qcow2 ab
ok qemu-img bitmap --add -g 4k good.qcow2 cd
ok qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -P 2 3M 64k' good.qcow2

# 1. "a\0" as the name of the first bitmap: QEMU reads it.
cp good.qcow2 nul.qcow2
patch_dir nul.qcow2 25 0
ok qemu-img check nul.qcow2
cp nul.qcow2 before.qcow2
ok imgtool check nul.qcow2
expect_match "$(out)" "^No errors were found on the image" "check of the NUL-named bitmap"
expect_eq "$(err)" "Warning: nul.qcow2: bitmap directory entry 0: the name contains a NUL byte: imgtool cannot load these bitmaps; their clusters are counted as in use" \
    "warning for the NUL-named bitmap"
ok imgtool check -r all nul.qcow2
expect_match "$(out)" "^No errors were found on the image" "repair of the NUL-named bitmap"
cmp -s before.qcow2 nul.qcow2 || die "check -r all changed an image without problems"
qemu_clean nul.qcow2
ok qemu-img info nul.qcow2
# imgtool still refuses to load it (another reader's bitmap), in one line.
expect_status 1 imgtool bitmap --list nul.qcow2
expect_eq "$(err)" "imgtool: nul.qcow2: bitmap directory entry 0: the name contains a NUL byte"

# 2. Two bitmaps of the same name (QEMU refuses to open the image): their
# clusters are counted all the same, nothing is freed.
cp good.qcow2 twice.qcow2
patch_dir twice.qcow2 24 0x63 0x64
cp twice.qcow2 before.qcow2
ok imgtool check -r all twice.qcow2
expect_match "$(err)" "two bitmaps are named 'cd': imgtool cannot load these bitmaps" \
    "warning for two bitmaps of the same name"
cmp -s before.qcow2 twice.qcow2 || die "check -r all changed the image with two bitmaps named cd"
patch_dir twice.qcow2 24 0x61 0x62
qemu_clean twice.qcow2

# 3. Unknown flags: the directory cannot be read at all (QEMU refuses to
# open the image).  The bitmap's table and data look leaked, but may be
# referenced: check -r all refuses, and nothing changes.
cp good.qcow2 flags.qcow2
patch_dir flags.qcow2 12 0 0 0 4
cp flags.qcow2 before.qcow2
expect_status 2 imgtool check flags.qcow2
expect_status 1 imgtool check -r all flags.qcow2
expect_match "$(err)" "ERROR not repairing: the bitmaps extension cannot be read, so the clusters it references are unknown; nothing is freed and no refcount is changed" \
    "repair refused"
cmp -s before.qcow2 flags.qcow2 || die "check -r all changed the image with an unreadable bitmap directory"
expect_status 1 imgtool check -r leaks flags.qcow2
cmp -s before.qcow2 flags.qcow2 || die "check -r leaks changed the image with an unreadable bitmap directory"
# Once the flag is fixed, the image is as clean as before.
patch_dir flags.qcow2 12 0 0 0 2
qemu_clean flags.qcow2
passed
