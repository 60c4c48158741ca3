# Damaged qcow2 images, generated from a good one: each is refused (or its
# bad part fails to read) with a one-line error naming the problem and
# exit status 1, never a crash.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

ok qemu-img create -f qcow2 -o cluster_size=4k good.qcow2 1M
ok qemu-io -f qcow2 -c 'write -P 0x11 0 64k' good.qcow2
ok qemu-img convert -c -O qcow2 -o cluster_size=4k good.qcow2 comp.qcow2
python3 - <<'PY'
import struct
g = open('good.qcow2', 'rb').read()
c = open('comp.qcow2', 'rb').read()
def put(name, edits, base=g):
    b = bytearray(base)
    for off, fmt, val in edits:
        struct.pack_into(fmt, b, off, val)
    open(name, 'wb').write(bytes(b))
l1 = struct.unpack_from('>Q', g, 40)[0]
rt = struct.unpack_from('>Q', g, 48)[0]
l2 = struct.unpack_from('>Q', g, l1)[0] & 0x00fffffffffffe00
ccl1 = struct.unpack_from('>Q', c, 40)[0]
cl2 = struct.unpack_from('>Q', c, ccl1)[0] & 0x00fffffffffffe00
put('l1-past-eof', [(40, '>Q', 1 << 40)])
put('l1-unaligned', [(40, '>Q', l1 + 8)])
put('l1-huge', [(36, '>I', 0x7fffffff)])
put('l1-too-small', [(36, '>I', 0), (24, '>Q', 1 << 40)])
put('refcount-order-7', [(96, '>I', 7)])
put('cluster-bits-30', [(20, '>I', 30)])
put('cluster-bits-8', [(20, '>I', 8)])
put('backing-too-long', [(8, '>Q', 512), (16, '>I', 0xffffffff)])
put('backing-outside', [(8, '>Q', 4000), (16, '>I', 1000)])
put('header-short', [(100, '>I', 64)])
put('header-huge', [(100, '>I', 1 << 20)])
put('version-4', [(4, '>I', 4)])
put('encrypted', [(32, '>I', 1)])
put('incompat-unknown', [(72, '>Q', 1 << 9)])
put('data-file', [(72, '>Q', 1 << 2)])
put('reftable-unaligned', [(48, '>Q', rt + 1)])
put('reftable-huge', [(56, '>I', 0xffffffff)])
put('snapshots-many', [(60, '>I', 0xffffffff)])
put('l2-unaligned', [(l1, '>Q', (l2 + 512) | (1 << 63))])
put('l2-past-eof', [(l1, '>Q', (1 << 40) | (1 << 63))])
put('l2-is-header', [(l1, '>Q', 0 | (1 << 63) | 4096 * 0)])
put('data-unaligned', [(l2, '>Q', (1 << 63) | 0x10200)])
put('compressed-garbage', [(cl2, '>Q', (1 << 62) | 0x1234 | (3 << 58))], c)
put('ext-too-large', [(112, '>I', 0x12345678), (116, '>I', 0xfffffff0)])
PY

# Refused at open: info prints one line on stderr and exits 1.
for f in l1-past-eof:'L1 table.*past the end of the file' l1-unaligned:'L1 table offset .* not cluster aligned' \
         l1-huge:'L1 table too large' l1-too-small:'L1 table too small' \
         refcount-order-7:'refcount_order 7' cluster-bits-30:'cluster_bits 30' \
         cluster-bits-8:'cluster_bits 8' backing-too-long:'backing file name too long' \
         backing-outside:'outside the header cluster' header-short:'header_length 64 is too small' \
         header-huge:'header_length .* exceeds the cluster size' version-4:'unsupported qcow2 version 4' \
         encrypted:'encrypted qcow2 images are not supported' \
         incompat-unknown:'unsupported qcow2 feature\(s\): unknown incompatible feature bit 9' \
         data-file:'external data file are not supported' \
         reftable-unaligned:'refcount table offset .* not cluster aligned' \
         reftable-huge:'refcount table size .* out of range' snapshots-many:'too many snapshots' \
         l2-unaligned:'L2 table offset .* not cluster aligned' l2-past-eof:'L2 table offset .* past the end' \
         ext-too-large:'header extension 0x12345678 is too large'; do
    name=${f%%:*} want=${f#*:}
    expect_status 1 imgtool info "$name"
    expect_eq "$(err | wc -l)" 1 "$name: one-line error"
    expect_match "$(err)" "^imgtool: $name: .*$want" "$name"
done
# l2-is-header points L1 at nothing (offset 0): reads as unallocated.
ok imgtool convert -O raw l2-is-header out.raw
# Bad entries are found when read: convert fails with one line.
for f in data-unaligned:'not cluster aligned' compressed-garbage:'compressed cluster at 0x1234'; do
    name=${f%%:*} want=${f#*:}
    ok imgtool info "$name"
    expect_status 1 imgtool convert -O raw "$name" out.raw
    expect_eq "$(err | wc -l)" 1 "$name: one-line error"
    expect_match "$(err)" "$name: .*$want" "$name"
done
# A writable open of an image marked corrupt or dirty is refused with a hint.
python3 - <<'PY'
import struct
g = bytearray(open('good.qcow2', 'rb').read())
struct.pack_into('>Q', g, 72, 2); open('corrupt.qcow2', 'wb').write(bytes(g))
struct.pack_into('>Q', g, 72, 1); open('dirty.qcow2', 'wb').write(bytes(g))
PY
expect_status 1 imgtool io -c 'write 0 512' corrupt.qcow2
expect_match "$(err)" "corrupt.qcow2: image is marked corrupt: open it read-only, or repair it with 'imgtool check -r all'"
ok imgtool info --output=json corrupt.qcow2
expect_match "$(out)" '"corrupt": true'
ok imgtool io -c 'read -P 0x11 0 64k' corrupt.qcow2
expect_status 1 imgtool io -c 'write 0 512' dirty.qcow2
expect_match "$(err)" "dirty.qcow2: image was not closed cleanly .*check -r all"
ok imgtool info --output=json dirty.qcow2
expect_match "$(out)" '"dirty-flag": true'
passed
