# Compressed qcow2 clusters between imgtool and QEMU, both directions and
# both compression types: qemu-img convert -c read back by imgtool byte for
# byte, and imgtool convert -c read by qemu-img (compare, check).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
"$IMGTOOL" create -f qcow2 probe.qcow2 1M >/dev/null 2>&1 ||
    skip "imgtool create -f qcow2 is not supported yet (needs the qcow2 driver)"
rm -f probe.qcow2

# A source with compressible text, incompressible random data, qemu-io
# patterns, written zeroes and holes; its size is not a whole number of
# clusters, so the last cluster is a partial one.
size=$((24 * 1024 * 1024 + 12 * 1024))
ok qemu-img create -f raw src.raw "$size"
seq 1 400000 > text
ok dd if=text of=src.raw bs=64k seek=16 conv=notrunc status=none
head -c $((3 * 1024 * 1024 + 4096)) /dev/urandom > random
ok dd if=random of=src.raw bs=4k seek=1025 conv=notrunc status=none
ok qemu-io -f raw -c 'write -P 0x5a 12M 1M' -c 'write -P 0 14M 1M' \
    -c 'write -P 0x21 20M 96k' -c "write -P 0x33 $((size - 8192)) 8k" src.raw

compressed_clusters() {
    qemu-img check -U --output=json "$1" | sed -n 's/.*"compressed-clusters": \([0-9]*\).*/\1/p'
}

for type in zlib zstd; do
    # QEMU compresses, imgtool reads.
    ok qemu-img convert -c -f raw -O qcow2 -o compression_type=$type src.raw "qemu-$type.qcow2"
    [ "$(compressed_clusters "qemu-$type.qcow2")" -gt 50 ] ||
        die "qemu-img wrote too few compressed clusters"
    ok imgtool convert -O raw "qemu-$type.qcow2" "back-$type.raw"
    checks=$((checks + 1))
    cmp src.raw "back-$type.raw" || die "imgtool read qemu-img's $type clusters wrong"
    ok imgtool compare src.raw "qemu-$type.qcow2"

    # imgtool compresses (on several threads), QEMU reads.
    ok imgtool convert -c -O qcow2 -o compression_type=$type src.raw "imgtool-$type.qcow2"
    same_content -f raw -F qcow2 src.raw "imgtool-$type.qcow2"
    qemu_clean "imgtool-$type.qcow2"
    expect_match "$(qemu-img info --output=json "imgtool-$type.qcow2")" \
        "\"compression-type\": \"$type\"" "compression type of imgtool-$type.qcow2"
    n=$(compressed_clusters "imgtool-$type.qcow2")
    expect_eq "$n" "$(compressed_clusters "qemu-$type.qcow2")" "compressed clusters ($type)"
    ok qemu-img convert -f qcow2 -O raw "imgtool-$type.qcow2" "qemu-back-$type.raw"
    checks=$((checks + 1))
    cmp src.raw "qemu-back-$type.raw" || die "qemu-img read imgtool's $type clusters wrong"

    # One request in flight gives the same image contents.
    ok imgtool convert -c -m 1 -O qcow2 -o compression_type=$type src.raw "serial-$type.qcow2"
    same_content -f qcow2 -F qcow2 "serial-$type.qcow2" "imgtool-$type.qcow2"
    qemu_clean "serial-$type.qcow2"

    # Compressed to compressed: imgtool reads and writes compressed clusters.
    ok imgtool convert -c -O qcow2 -o compression_type=$type "qemu-$type.qcow2" "again-$type.qcow2"
    same_content -f raw -F qcow2 src.raw "again-$type.qcow2"
    qemu_clean "again-$type.qcow2"
done

# Without -o compression_type, qcow2 compresses with zlib, as QEMU does.
ok imgtool convert -c -O qcow2 src.raw default.qcow2
expect_match "$(qemu-img info --output=json default.qcow2)" '"compression-type": "zlib"' \
    "default compression type"
same_content -f raw -F qcow2 src.raw default.qcow2

# Where compression stops paying: QEMU gives its compressor a cluster less
# one byte, and zlib (deflate) only finishes with room to spare, so a
# cluster whose raw deflate stream is cluster_size - 1 bytes or longer stays
# uncompressed.  Four clusters of random bytes then zeroes, their streams
# cluster_size - 3, - 2, - 1 and + 0 bytes long (zlib with QEMU's
# parameters, from the same library).  imgtool must choose as QEMU does.
need python3
ok python3 - <<'PY'
import random, zlib
cs = 65536
pool = random.Random(1).randbytes(cs)
def deflated(d):
    c = zlib.compressobj(6, zlib.DEFLATED, -12, 9)
    return len(c.compress(d) + c.flush())
out = b""
for want in (cs - 3, cs - 2, cs - 1, cs):
    k = next(k for k in range(cs - 300, cs) if deflated(pool[:k] + bytes(cs - k)) == want)
    out += pool[:k] + bytes(cs - k)
open("edge.raw", "wb").write(out)
PY
# The ranges (START+LENGTH) qemu-img map shows without a host offset: the
# compressed clusters.
compressed_ranges() {
    qemu-img map -U --output=json "$1" | grep -v '"offset"' |
        sed -n 's/.*"start": \([0-9]*\), "length": \([0-9]*\).*/\1+\2/p' | tr '\n' ' '
}
for type in zlib zstd; do
    ok qemu-img convert -c -f raw -O qcow2 -o compression_type=$type edge.raw edge-qemu.qcow2
    ok imgtool convert -c -f raw -O qcow2 -o compression_type=$type edge.raw edge-mine.qcow2
    want=$(compressed_ranges edge-qemu.qcow2)
    [ $type = zlib ] && expect_eq "$want" "0+131072 " "clusters qemu-img compresses ($type)"
    expect_eq "$(compressed_ranges edge-mine.qcow2)" "$want" "clusters imgtool compresses ($type)"
    same_content -f raw -F qcow2 edge.raw edge-mine.qcow2
    qemu_clean edge-mine.qcow2
    rm -f edge-qemu.qcow2 edge-mine.qcow2
done
passed
