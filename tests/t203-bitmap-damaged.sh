# Damaged bitmap metadata: every field of the bitmaps extension, the bitmap
# directory and the bitmap tables is validated before use.  Targeted damage
# gives a one-line error naming the problem (info, bitmap --list/--dump, a
# writable open); random bit flips in the same structures never crash (the
# exit status is 0 or 1, also under SANITIZE=1).
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
need qemu-img qemu-io python3

ok qemu-img create -q -f qcow2 -o cluster_size=4k good.qcow2 16M
ok qemu-img bitmap --add -g 4k good.qcow2 b
ok qemu-img bitmap --add -g 512 good.qcow2 c
ok qemu-io -f qcow2 -c 'write 0 8k' -c 'write 15M 1M' good.qcow2

# patch IMG WHAT VALUE: overwrite one field (python below knows the layout:
# qcow2.txt "Bitmaps extension", "Bitmap directory", "Bitmap table").
patch() {
    cp good.qcow2 "$1"
    python3 - "$@" <<'PY' || die "cannot patch $1 ($2)"
import struct, sys
path, what, value = sys.argv[1], sys.argv[2], int(sys.argv[3], 0)
f = open(path, 'r+b')
hdr = f.read(4096)
hlen = struct.unpack('>I', hdr[100:104])[0]
pos = hlen
while True:
    typ, ln = struct.unpack('>II', hdr[pos:pos + 8])
    if typ == 0x23852875:
        ext = pos + 8
        break
    pos += 8 + (ln + 7) // 8 * 8
nb, _, dsize, doff = struct.unpack('>IIQQ', hdr[ext:ext + 24])
f.seek(doff)
d = f.read(dsize)
tab_off, tab_size = struct.unpack('>QI', d[0:12])
fields = {                       # offset in the file, struct format
    'nb_bitmaps': (ext, '>I'), 'reserved': (ext + 4, '>I'), 'dir_size': (ext + 8, '>Q'),
    'dir_offset': (ext + 16, '>Q'), 'autoclear': (88, '>Q'),
    'table_offset': (doff, '>Q'), 'table_size': (doff + 8, '>I'), 'flags': (doff + 12, '>I'),
    'type': (doff + 16, '>B'), 'granularity_bits': (doff + 17, '>B'),
    'name_size': (doff + 18, '>H'), 'extra_data_size': (doff + 20, '>I'),
    'name0': (doff + 24, '>B'), 'entry0': (tab_off, '>Q'),
}
off, fmt = fields[what]
f.seek(off)
f.write(struct.pack(fmt, value))
PY
}

# expect_damage IMG WHAT VALUE MESSAGE: info and --list fail with MESSAGE.
expect_damage() {
    patch "$1" "$2" "$3"
    expect_status 1 imgtool info "$1"
    expect_eq "$(err)" "imgtool: $1: $4" "info of $1 ($2=$3)"
    expect_status 1 imgtool bitmap --list "$1"
    expect_eq "$(err)" "imgtool: $1: $4" "bitmap --list of $1 ($2=$3)"
    expect_status 1 imgtool io -c 'write 0 1' "$1"
    expect_eq "$(err)" "imgtool: $1: $4" "writable open of $1 ($2=$3)"
}

expect_damage d1.qcow2 nb_bitmaps 0 "invalid bitmaps extension: zero bitmaps"
expect_damage d2.qcow2 nb_bitmaps 70000 "invalid bitmaps extension: 70000 bitmaps, more than the 65535 QEMU supports"
expect_damage d3.qcow2 reserved 1 "invalid bitmaps extension: reserved field is not zero"
expect_damage d4.qcow2 dir_offset 0x1234 "invalid bitmaps extension: directory offset 0x1234 is not cluster aligned"
expect_damage d5.qcow2 dir_offset 0x100000000 "invalid bitmaps extension: directory 0x100000000+64 is past the end of the file"
expect_damage d6.qcow2 dir_size 0x10000000 "invalid bitmaps extension: directory size 268435456 is not between 1 and 67107840"
expect_damage d7.qcow2 dir_size 60 "bitmap directory entry 1 runs past the end of the directory"
expect_damage d7b.qcow2 dir_size 40 "bitmap directory is shorter than its 2 entries"
expect_damage d8.qcow2 nb_bitmaps 1 "bitmap directory has 32 bytes after its 1 entries"
expect_damage d9.qcow2 granularity_bits 40 "bitmap 'b': granularity_bits 40 is not between 9 and 31"
expect_damage d10.qcow2 type 2 "bitmap 'b': unknown type 2"
expect_damage d11.qcow2 flags 4 "bitmap 'b': unknown flags 0x4"
expect_damage d12.qcow2 extra_data_size 8 "bitmap directory entry 0: extra data is not supported"
expect_damage d13.qcow2 table_size 0 "bitmap 'b': bitmap table size 0 is out of range"
expect_damage d14.qcow2 table_size 2 "bitmap 'b': bitmap table has 2 entries, the disk size needs 1"
expect_damage d15.qcow2 table_offset 0x1001 "bitmap 'b': bitmap table offset 0x1001 is not cluster aligned"
expect_damage d16.qcow2 table_offset 0x40000000 "bitmap 'b': bitmap table 0x40000000+8 is past the end of the file"
expect_damage d17.qcow2 name_size 0 "bitmap directory entry 0: name size 0 is not between 1 and 1023"
expect_damage d18.qcow2 name0 0 "bitmap directory entry 0: the name contains a NUL byte"
expect_damage d19.qcow2 name0 0x63 "two bitmaps are named 'c'"

# Damage in a bitmap table shows when the bitmap is loaded.
patch t1.qcow2 entry0 0x8000000000001000
ok imgtool info t1.qcow2
expect_status 1 imgtool bitmap --dump t1.qcow2 b
expect_eq "$(err)" "imgtool: t1.qcow2: bitmap 'b': bitmap table entry 0 (0x8000000000001000) is invalid"
patch t2.qcow2 entry0 0x40000000
expect_status 1 imgtool bitmap --dump t2.qcow2 c
expect_eq "$(err)" "imgtool: t2.qcow2: bitmap 'b': data cluster 0x40000000 is past the end of the file"
# An all-ones entry reads as all dirty.
patch t3.qcow2 entry0 1
ok imgtool bitmap --dump --output=json t3.qcow2 b
expect_eq "$(out)" '[{ "start": 0, "length": 16777216}]'

# Autoclear bit 0 clear: a program without bitmap support wrote the image,
# so the bitmaps are ignored, as by QEMU; the first writable open drops the
# stale extension (its clusters leak, as with QEMU).
patch s.qcow2 autoclear 0
ok imgtool info --output=json s.qcow2
[ "$(out | grep -c bitmaps)" = 0 ] || die "bitmaps listed without the autoclear bit"
[ "$(qemu-img info --output=json s.qcow2 2>/dev/null | grep -c bitmaps)" = 0 ] ||
    die "qemu-img lists them"
ok imgtool bitmap --list s.qcow2
expect_eq "$(out)" "NAME              GRANULARITY  FLAGS             DIRTY BYTES"
ok imgtool bitmap --add s.qcow2 fresh
expect_match "$(qemu-img info --output=json s.qcow2 | tr -d ' \n')" \
             '"bitmaps":\[\{"flags":\["auto"\],"name":"fresh","granularity":4096\}\],'

expect_status 3 qemu-img check s.qcow2

# Random bit flips in the extension, the directory, the tables and the data.
python3 - good.qcow2 <<'PY'
import random, struct, sys
random.seed(4321)
src = open(sys.argv[1], 'rb').read()
hlen = struct.unpack('>I', src[100:104])[0]
pos = hlen
while struct.unpack('>I', src[pos:pos + 4])[0] != 0x23852875:
    pos += 8 + (struct.unpack('>I', src[pos + 4:pos + 8])[0] + 7) // 8 * 8
ext = pos + 8
nb, _, dsize, doff = struct.unpack('>IIQQ', src[ext:ext + 24])
spans = [(ext, 24), (doff, dsize)]
d = src[doff:doff + dsize]
p = 0
for i in range(nb):
    toff, tsize = struct.unpack('>QI', d[p:p + 12])
    spans.append((toff, tsize * 8))
    for j in range(tsize):
        data = struct.unpack('>Q', src[toff + 8 * j:toff + 8 * j + 8])[0] & 0x00fffffffffffe00
        if data:
            spans.append((data, 4096))
    p += (24 + struct.unpack('>H', d[p + 18:p + 20])[0] + 7) // 8 * 8
for n in range(120):
    b = bytearray(src)
    for _ in range(random.randint(1, 4)):
        start, length = random.choice(spans)
        at = start + random.randrange(length)
        b[at] ^= 1 << random.randrange(8)
    open('flip%d.qcow2' % n, 'wb').write(bytes(b))
PY
# no_crash ARGS...: imgtool ARGS exits 0 or 1.
no_crash() {
    local rc=0
    imgtool "$@" >/dev/null 2>"$T/.flip" || rc=$?
    checks=$((checks + 1))
    [ $rc = 0 ] || [ $rc = 1 ] || die "imgtool $* exited $rc: $(cat "$T/.flip")"
}
opened=0
for f in flip*.qcow2; do
    no_crash info "$f"
    no_crash bitmap --list "$f"
    no_crash bitmap --dump "$f" b
    no_crash bitmap --dump "$f" c
    no_crash io -c 'write 0 1' "$f"
    [ "$(cat "$T/.flip")" = "" ] && opened=$((opened + 1))
    no_crash bitmap --add "$f" new
done
# Some flips hit only data bits: those images stay usable.
[ $opened -ge 10 ] || die "only $opened of the damaged images opened for writing"
passed
