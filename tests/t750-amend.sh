# amend -o: refcount_bits (every width, the refcount structure rewritten),
# compat 1.1 -> 0.10 (zero clusters converted as qemu-img converts them,
# with and without a backing file) and back (then bitmaps can be added),
# lazy_refcounts, size, backing_file/backing_fmt; every result passes
# qemu-img check and reads as before (qemu-img compare); what cannot change
# is refused as qemu-img refuses it, leaving the image as it was.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

strict_clean() {
    checks=$((checks + 1))
    local o; o=$(qemu-img check -U "$1" 2>&1) || die "qemu-img check $1: $o"
    grep -q "No errors were found" <<<"$o" || die "qemu-img check $1: $o"
    grep -qi "leak" <<<"$o" && die "qemu-img check $1: $o"
    return 0
}
info_field() { qemu-img info -U --output=json "$1" | sed -n "s/^ *\"$2\": \(.*\),\?\$/\1/p" | sed 's/,$//' | head -1; }
# Map without host offsets: where data, zeroes and holes are.  A cluster
# zeroed with FALLOC_FL_ZERO_RANGE maps as zero or not depending on the
# page cache (ext4 unwritten extents), so "zero" of data is not compared.
layout() {
    qemu-img map -U --output=json "$1" |
        sed 's/, "offset": [0-9]*//; s/"zero": true, "data": true/"zero": false, "data": true/'
}
# amend_refused ERR_REGEX IMG OPTS: refused by imgtool and qemu-img alike,
# with the message, and the image unchanged.
amend_refused() {
    local re=$1 img=$2; shift 2
    cp "$img" ref-copy.qcow2
    cp "$img" before.qcow2
    expect_status 1 qemu-img amend "$@" ref-copy.qcow2
    expect_match "$(err)" "$re"
    local ref; ref=$(err | head -1 | grep -Eo -- "$re")
    expect_status 1 imgtool amend "$@" "$img"
    expect_match "$(err)" "$re"
    expect_eq "$(err | grep -Eo -- "$re")" "$ref" "amend $* message"
    checks=$((checks + 1))
    cmp -s "$img" before.qcow2 || die "amend $* changed $img although refused"
}

# 1. refcount_bits, every width and back, on an image with data,
# compressed and zero clusters, a snapshot (refcount 2) and a bitmap.
ok qemu-img create -q -f qcow2 d.qcow2 20M
ok qemu-io -f qcow2 -c 'write -P 1 0 3M' -c 'write -z 4M 1M' -c 'write -c -P 2 8M 64k' \
    -c 'write -P 3 10M 64k' -c 'write -z 10M 64k' d.qcow2
ok qemu-img snapshot -c s1 d.qcow2
ok qemu-io -f qcow2 -c 'write -P 4 1M 64k' d.qcow2
ok qemu-img bitmap --add d.qcow2 bm
ok qemu-img convert -O qcow2 d.qcow2 orig.qcow2
for bits in 2 4 8 32 64 16 8; do
    ok imgtool amend -o refcount_bits=$bits d.qcow2
    expect_eq "$(info_field d.qcow2 refcount-bits)" "$bits" "refcount bits after amend"
    strict_clean d.qcow2
    same_content d.qcow2 orig.qcow2
done
ok qemu-img bitmap --remove d.qcow2 bm
ok qemu-img snapshot -a s1 d.qcow2
strict_clean d.qcow2
# A cluster referenced twice does not fit one bit: refused as qemu-img does.
ok qemu-img snapshot -c s2 d.qcow2
amend_refused "Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x[0-9a-f]+ has a refcount of [0-9]+" d.qcow2 -o refcount_bits=1
ok qemu-img snapshot -d s1 d.qcow2
ok qemu-img snapshot -d s2 d.qcow2
ok imgtool amend -o refcount_bits=1 d.qcow2
strict_clean d.qcow2
ok imgtool amend -o refcount_bits=16 d.qcow2

# 2. compat=0.10: zero clusters become unallocated without a backing
# file, zero-filled clusters over one; qemu-img gets the same layout.
for backing in no yes; do
    rm -f z.qcow2 zq.qcow2 base.qcow2
    ok qemu-img create -q -f qcow2 base.qcow2 8M
    ok qemu-io -f qcow2 -c 'write -P 9 0 8M' base.qcow2
    if [ $backing = yes ]; then
        ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 z.qcow2
    else
        ok qemu-img create -q -f qcow2 z.qcow2 8M
    fi
    ok qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -z 2M 128k' -c 'write -P 2 3M 64k' \
        -c 'write -z 3M 64k' -c 'write -c -P 3 5M 64k' z.qcow2
    ok qemu-img convert -O qcow2 z.qcow2 zorig.qcow2
    cp z.qcow2 zq.qcow2
    ok qemu-img amend -o compat=0.10 zq.qcow2
    ok imgtool amend -o compat=0.10 z.qcow2
    expect_eq "$(info_field z.qcow2 compat)" '"0.10"' "compat after amend"
    strict_clean z.qcow2
    same_content z.qcow2 zorig.qcow2
    expect_eq "$(layout z.qcow2)" "$(layout zq.qcow2)" "layout after compat=0.10 ($backing backing)"
    # And back: a v3 image again, which can hold bitmaps.
    ok imgtool amend -o compat=1.1 z.qcow2
    expect_eq "$(info_field z.qcow2 compat)" '"1.1"' "compat after upgrade"
    strict_clean z.qcow2
    ok imgtool bitmap --add z.qcow2 b1
    ok qemu-img bitmap --add z.qcow2 b2
    strict_clean z.qcow2
    same_content z.qcow2 zorig.qcow2
done
# A v2 image cannot hold bitmaps; after the upgrade it can.
ok qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M
expect_status 1 imgtool bitmap --add v2.qcow2 b1
ok imgtool amend -o compat=v3,lazy_refcounts=on v2.qcow2
ok imgtool bitmap --add v2.qcow2 b1
strict_clean v2.qcow2
expect_eq "$(info_field v2.qcow2 lazy-refcounts)" "true" "lazy refcounts"
ok imgtool amend -o lazy_refcounts=off v2.qcow2
expect_eq "$(info_field v2.qcow2 lazy-refcounts)" "false" "lazy refcounts"

# A v2 snapshot without extra data (as old QEMU wrote them): the upgrade
# rewrites the table with the v3 fields (disk size, 64-bit VM state size).
ok qemu-img create -q -f qcow2 -o compat=0.10 old.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 1 0 1M' old.qcow2
ok qemu-img snapshot -c s old.qcow2
python3 - old.qcow2 <<'PY' || die "cannot strip the snapshot extra data"
import struct, sys
f = open(sys.argv[1], "r+b")
hdr = f.read(72)
nb, off = struct.unpack(">IQ", hdr[60:72])
f.seek(off)
h = bytearray(f.read(40))
id_len, name_len = struct.unpack(">HH", h[12:16])
extra = struct.unpack(">I", h[36:40])[0]
f.seek(off + 40 + extra)
names = f.read(id_len + name_len)
h[36:40] = struct.pack(">I", 0)
f.seek(off)
f.write(bytes(h) + names + bytes(extra))
PY
strict_clean old.qcow2
ok imgtool amend -o compat=1.1 old.qcow2
strict_clean old.qcow2
python3 - old.qcow2 <<'PY' || die "the upgraded snapshot has no v3 extra data"
import struct, sys
f = open(sys.argv[1], "rb")
hdr = f.read(72)
off = struct.unpack(">Q", hdr[64:72])[0]
f.seek(off)
h = f.read(40 + 24)
assert struct.unpack(">I", h[36:40])[0] == 24, "extra data size"
assert struct.unpack(">Q", h[48:56])[0] == 4 << 20, "disk size"
PY
ok qemu-img snapshot -a s old.qcow2
strict_clean old.qcow2

# 3. Downgrade refusals.
ok qemu-img create -q -f qcow2 -o extended_l2=on x.qcow2 4M
amend_refused "Cannot downgrade an image with incompatible features 0x10 set" x.qcow2 -o compat=0.10
ok qemu-img create -q -f qcow2 -o compression_type=zstd zs.qcow2 4M
ok qemu-io -f qcow2 -c 'write -c -P 1 0 64k' zs.qcow2
amend_refused "Cannot downgrade an image with zstd compression type and existing compressed clusters" zs.qcow2 -o compat=0.10
ok qemu-io -f qcow2 -c 'write -P 1 0 64k' zs.qcow2
ok imgtool amend -o compat=0.10 zs.qcow2
expect_eq "$(info_field zs.qcow2 compression-type)" '"zlib"' "compression type after downgrade"
strict_clean zs.qcow2
ok qemu-img create -q -f qcow2 -o refcount_bits=8 r8.qcow2 4M
amend_refused "compat=0.10 requires refcount_bits=16" r8.qcow2 -o compat=0.10
ok imgtool amend -o compat=0.10,refcount_bits=16 r8.qcow2
strict_clean r8.qcow2
amend_refused "Lazy refcounts only supported with compatibility level 1.1" r8.qcow2 -o lazy_refcounts=on
amend_refused "Refcount widths other than 16 bits require compatibility level 1.1" r8.qcow2 -o refcount_bits=8
ok qemu-img create -q -f qcow2 sn.qcow2 4M
ok qemu-img snapshot -c s sn.qcow2
ok qemu-img resize -q sn.qcow2 8M
amend_refused "Internal snapshots prevent downgrade of image" sn.qcow2 -o compat=0.10
# Bitmaps: qemu-img 7.2 downgrades and strands them; imgtool refuses.
ok qemu-img create -q -f qcow2 bm.qcow2 4M
ok qemu-img bitmap --add bm.qcow2 b
expect_status 1 imgtool amend -o compat=0.10 bm.qcow2
expect_match "$(err)" "Cannot downgrade an image with persistent bitmaps"
strict_clean bm.qcow2
expect_eq "$(info_field bm.qcow2 compat)" '"1.1"' "compat after a refused downgrade"
ok qemu-img info --output=json bm.qcow2
expect_match "$(out)" '"flags": \[\s*"auto"\s*\]|"auto"'

# 4. What amend cannot change.
amend_refused "Invalid parameter 'cluster_size'" d.qcow2 -o cluster_size=4k
amend_refused "Invalid parameter 'extended_l2'" d.qcow2 -o extended_l2=on
amend_refused "Invalid parameter 'compression_type'" d.qcow2 -o compression_type=zstd
amend_refused "Invalid parameter 'nosuch'" d.qcow2 -o nosuch=1
amend_refused "Unknown compatibility level 0.9" d.qcow2 -o compat=0.9
amend_refused "Refcount width must be a power of two" d.qcow2 -o refcount_bits=3
expect_status 1 imgtool amend d.qcow2
expect_match "$(err)" "Must specify options \(-o\)"
ok qemu-img create -q -f raw r.raw 1M
expect_status 1 imgtool amend -f raw -o size=2M r.raw
expect_match "$(err)" "does not support option amendment"

# 5. Size and backing file.
ok imgtool amend -o size=40M d.qcow2
expect_eq "$(info_field d.qcow2 virtual-size)" 41943040 "size after amend"
strict_clean d.qcow2
ok qemu-img create -q -f qcow2 top.qcow2 8M
ok imgtool amend -o backing_file=base.qcow2,backing_fmt=qcow2 top.qcow2
expect_eq "$(info_field top.qcow2 backing-filename)" '"base.qcow2"' "backing file"
expect_eq "$(info_field top.qcow2 backing-filename-format)" '"qcow2"' "backing format"
same_content top.qcow2 base.qcow2
strict_clean top.qcow2

# 6. -o help: the options imgtool amends, listed as qemu-img lists them.
ok imgtool amend -f qcow2 -o help
expect_eq "$(out | head -1)" "Amend options for 'qcow2':" "-o help caption"
qemu-img amend -f qcow2 -o help > ref-help.txt
out | tail -n +2 > my-help.txt
checks=$((checks + 1))
[ -z "$(comm -23 my-help.txt <(tail -n +2 ref-help.txt))" ] ||
    die "amend -o help lines not in qemu-img's: $(comm -23 my-help.txt <(tail -n +2 ref-help.txt))"
expect_eq "$(wc -l < my-help.txt)" 6 "amend -o help lines"
passed
