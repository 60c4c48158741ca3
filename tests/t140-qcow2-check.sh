# imgtool check on qcow2 against qemu-img check: on clean images of the
# qcow2 matrix and on images damaged in controlled ways, the same problem
# lines, the same summary, the same exit status and the same --output=json
# object; -r leaks / -r all repair them into the same bytes as qemu-img's
# repair, after which qemu-img check is clean and the data reads the same.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# damage.py IN OUT EDIT...: copy a qcow2 image, applying edits:
#   ref+N:C / ref-N:C / ref=N:C   refcount of cluster C (any refcount width)
#   l1:I=V / l2:I=V / l2b:I=V     active L1 entry I, entry I (or its extended
#                                 L2 bitmap) of the L2 table of L1 entry 0
#   rt:I=V  u64:OFF=V  incompat|=V  snapl1:OFF / snapl1size:N (snapshot 1)
# V may use the names l2 (L2 of L1 entry 0), dataN (host offset of L2 entry
# N), copied (bit 63), bmdir (bitmap directory), bmtableN / bmdataN (table
# of bitmap N, the first data cluster it lists).
cat > damage.py <<'PY'
import struct, sys
src, dst = sys.argv[1], sys.argv[2]
b = bytearray(open(src, 'rb').read())
q = lambda o: struct.unpack_from('>Q', b, o)[0]
setq = lambda o, v: struct.pack_into('>Q', b, o, v)
version = struct.unpack_from('>I', b, 4)[0]
cbits = struct.unpack_from('>I', b, 20)[0]; cs = 1 << cbits
l1, rt = q(40), q(48)
order = struct.unpack_from('>I', b, 96)[0] if version == 3 else 4
extl2 = version == 3 and q(72) & 16
esz = 16 if extl2 else 8
MASK = 0x00fffffffffffe00
l2 = q(l1) & MASK
names = {'l2': l2, 'copied': 1 << 63, 'compressed': 1 << 62}
for i in range(cs // esz):
    names['data%d' % i] = q(l2 + i * esz) & MASK if l2 else 0
hl = struct.unpack_from('>I', b, 100)[0] if version == 3 else 72
while version == 3:
    t, n = struct.unpack_from('>II', b, hl)
    if t == 0:
        break
    if t == 0x23852875:
        count, _, dsize, names['bmdir'] = struct.unpack_from('>IIQQ', b, hl + 8)
        e = names['bmdir']
        for i in range(count):
            names['bmtable%d' % i] = q(e)
            names['bmdata%d' % i] = q(q(e)) & MASK
            e += (24 + struct.unpack_from('>I', b, e + 20)[0] +
                  struct.unpack_from('>H', b, e + 18)[0] + 7) & ~7
    hl += 8 + ((n + 7) & ~7)
def val(s):
    return eval(s, {}, names)
def refpos(c):
    bits = 1 << order; per = cs * 8 // bits
    return (q(rt + 8 * (c // per)) & ~0x1ff) + (c % per) * bits // 8, bits, c % per
def getref(c):
    o, bits, i = refpos(c)
    if bits >= 8:
        return int.from_bytes(b[o:o + bits // 8], 'big')
    sh = (i % (8 // bits)) * bits
    return (b[o] >> sh) & ((1 << bits) - 1)
def setref(c, v):
    o, bits, i = refpos(c)
    if bits >= 8:
        b[o:o + bits // 8] = v.to_bytes(bits // 8, 'big')
    else:
        sh = (i % (8 // bits)) * bits; m = ((1 << bits) - 1) << sh
        b[o] = (b[o] & ~m) | ((v << sh) & m)
snap = q(64)
for edit in sys.argv[3:]:
    what, arg = edit.split(':', 1) if ':' in edit else (edit, '')
    if what.startswith('ref'):
        c = val(arg) // cs if not arg.isdigit() else int(arg)
        op, n = what[3], int(what[4:])
        setref(c, getref(c) + n if op == '+' else getref(c) - n if op == '-' else n)
    elif what == 'l1':
        i, v = arg.split('='); setq(l1 + 8 * int(i), val(v))
    elif what in ('l2', 'l2b'):
        i, v = arg.split('='); setq(l2 + esz * int(i) + (8 if what == 'l2b' else 0), val(v))
    elif what == 'rt':
        i, v = arg.split('='); setq(rt + 8 * int(i), val(v))
    elif what == 'u64':
        o, v = arg.split('='); setq(val(o), val(v))
    elif what.startswith('incompat'):
        setq(72, q(72) | val(what.split('|=')[1]))
    elif what == 'snapl1':
        setq(snap, q(snap) + val(arg))
    elif what == 'snapl1size':
        struct.pack_into('>I', b, snap + 8, val(arg))
    else:
        sys.exit('unknown edit ' + edit)
open(dst, 'wb').write(bytes(b))
PY
damage() { python3 damage.py "$@" || die "damage.py $*"; }

# same_json A B: the two check JSON objects are equal apart from the file name.
same_json() {
    checks=$((checks + 1))
    python3 - "$1" "$2" <<'PY' || die "check --output=json differs from qemu-img's ($*)"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
for o in (a, b):
    o.pop('filename', None)
if a != b:
    print(json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True), sep='\n')
    sys.exit(1)
PY
}

# run_both IMG ARGS...: qemu-img check ARGS on a copy q.qcow2, imgtool check
# ARGS on a copy i.qcow2; outputs in q.* and i.*, exit statuses in QRC/IRC.
# The final "Check failed" line of each (worded differently) is set apart.
run_both() {
    local img=$1; shift
    cp "$img" q.qcow2 && cp "$img" i.qcow2 || die "copy $img"
    QRC=0 IRC=0
    qemu-img check "$@" q.qcow2 > q.out 2> q.err || QRC=$?
    imgtool check "$@" i.qcow2 > i.out 2> i.err || IRC=$?
    grep -v '^qemu-img: Check failed' q.err > q.lines
    grep -v '^imgtool: i.qcow2: Check failed' i.err > i.lines
    QFAIL=$(grep -c '^qemu-img: Check failed' q.err)
    IFAIL=$(grep -c '^imgtool: i.qcow2: Check failed' i.err)
}

# same_check IMG ARGS...: imgtool check gives what qemu-img check gives:
# exit status, problem lines, summary (human) or object (json), and for a
# repair the same bytes in the file.  Prints the exit status.
same_check() {
    local img=$1; shift
    run_both "$img" "$@"
    expect_eq "$IRC" "$QRC" "$img $*: exit status (qemu-img: $(cat q.err q.out | tail -n 3))"
    checks=$((checks + 1))
    diff q.lines i.lines > /dev/null || die "$img $*: problem lines differ: $(diff q.lines i.lines | head -n 10)"
    expect_eq "$IFAIL" "$QFAIL" "$img $*: 'Check failed' line"
    if [[ " $* " == *" --output=json "* ]]; then
        if [ -s q.out ]; then
            same_json q.out i.out
        elif [ "$IRC" = 1 ]; then
            # A failed JSON run prints the error object (imgtool(1), JSON ERRORS).
            expect_match "$(cat i.out)" '^\{"error": \{"class": "GenericError", "desc": ".+"\}\}$' "$img $*: json"
        else
            expect_eq "$(cat i.out)" "" "$img $*: json"
        fi
    else
        expect_eq "$(cat i.out)" "$(cat q.out)" "$img $*: summary"
    fi
    if [[ " $* " == *" -r "* ]] && [ -z "${NOBYTES:-}" ]; then
        checks=$((checks + 1))
        cmp -s q.qcow2 i.qcow2 || die "$img $*: repaired image differs from qemu-img's: $(cmp q.qcow2 i.qcow2)"
    fi
}

# all_modes IMG STATUS: check, json, -r leaks, -r all (and json repairs)
# agree with qemu-img; the plain check exits STATUS.
all_modes() {
    same_check "$1"
    expect_eq "$IRC" "$2" "$1: exit status"
    same_check "$1" --output=json
    same_check "$1" -r leaks
    same_check "$1" -r leaks --output=json
    same_check "$1" -r all
    same_check "$1" -r all --output=json
}

# repaired_clean IMG MODE [ORIG]: imgtool check -r MODE leaves an image that
# qemu-img check finds clean and, with ORIG, reads the same as ORIG.
repaired_clean() {
    cp "$1" r.qcow2
    ok imgtool check -r "$2" r.qcow2
    qemu_clean r.qcow2
    ok imgtool check r.qcow2
    expect_eq "$(out)" "$(qemu-img check r.qcow2)" "$1: check after -r $2"
    [ -n "${3:-}" ] && same_content "$3" r.qcow2
    return 0
}

# --- clean images of the qcow2 matrix ---
n=0
for spec in "compat=0.10,cluster_size=512" "compat=0.10,cluster_size=64k" \
            "compat=0.10,cluster_size=2M" "cluster_size=512,refcount_bits=1" \
            "cluster_size=4k,refcount_bits=2" "cluster_size=4k,refcount_bits=4" \
            "cluster_size=4k,refcount_bits=8" "cluster_size=64k,refcount_bits=16" \
            "cluster_size=64k,refcount_bits=32" "cluster_size=64k,refcount_bits=64" \
            "cluster_size=2M,refcount_bits=16" "cluster_size=64k,extended_l2=on" \
            "cluster_size=16k,extended_l2=on,refcount_bits=1" "cluster_size=2M,extended_l2=on" \
            "preallocation=metadata,cluster_size=4k" "lazy_refcounts=on"; do
    n=$((n + 1))
    ok qemu-img create -f qcow2 -o "$spec" m$n.qcow2 8M
    ok qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 3M 100k' -c 'write -z 5M 1M' \
        -c 'discard 64k 64k' -c 'write -P 3 7M 4k' m$n.qcow2
done
ok qemu-img create -f qcow2 src.qcow2 8M
ok qemu-io -c 'write -P 7 0 3M' -c 'write -P 0 4M 1M' src.qcow2
ok qemu-img convert -c -O qcow2 src.qcow2 zlib.qcow2
ok qemu-img convert -c -O qcow2 -o compression_type=zstd,cluster_size=4k src.qcow2 zstd.qcow2
ok qemu-img convert -c -O qcow2 -o extended_l2=on src.qcow2 compel2.qcow2
cp src.qcow2 snap.qcow2
ok qemu-img snapshot -c s1 snap.qcow2
ok qemu-io -c 'write -P 9 1M 2M' snap.qcow2
ok qemu-img snapshot -c s2 snap.qcow2
ok qemu-io -c 'write -P 10 0 512k' snap.qcow2
ok qemu-img create -f qcow2 -o compat=0.10 snapv2.qcow2 8M
ok qemu-io -c 'write -P 1 0 1M' snapv2.qcow2
ok qemu-img snapshot -c s1 snapv2.qcow2
ok qemu-io -c 'write -P 2 512k 1M' snapv2.qcow2
ok qemu-img create -f qcow2 empty.qcow2 1G
for img in m*.qcow2 src.qcow2 zlib.qcow2 zstd.qcow2 compel2.qcow2 snap.qcow2 snapv2.qcow2 \
           empty.qcow2; do
    same_check $img
    expect_eq "$IRC" 0 "$img: exit status"
    same_check $img --output=json
    same_check $img -r all
done
expect_match "$(cat i.out)" '^No errors were found on the image.' "clean summary"

# --- damaged images: each edit, every mode ---
base=m8.qcow2           # v3, 64k clusters, 16-bit refcounts
cp $base base.orig
# refcounts too high (header and refcount table): leaks (exit 3); -r leaks
# lowers them.
damage $base leak.qcow2 ref+1:0 ref+2:1
all_modes leak.qcow2 3
expect_eq "$(cat q.lines)" "Leaked cluster 0 refcount=2 reference=1
Leaked cluster 1 refcount=3 reference=1
Repairing cluster 0 refcount=2 reference=1
Repairing cluster 1 refcount=3 reference=1" "leak lines"
repaired_clean leak.qcow2 leaks base.orig
# too high on a data cluster: a leak, and OFLAG_COPIED no longer matches.
damage $base leakdata.qcow2 ref+1:data0
all_modes leakdata.qcow2 2
repaired_clean leakdata.qcow2 leaks base.orig
# one too low, to 0: a corruption only a rebuilt refcount structure fixes.
damage $base zero.qcow2 ref-1:data1
all_modes zero.qcow2 2
same_check zero.qcow2 -r leaks
expect_eq "$IRC" 1 "zero: -r leaks cannot repair"
expect_match "$(cat i.lines)" 'ERROR need to rebuild refcount structures' "zero: -r leaks"
repaired_clean zero.qcow2 all base.orig
# one too low on a cluster a snapshot shares: -r all raises it.
damage snap.qcow2 snaplow.qcow2 ref-1:data0
all_modes snaplow.qcow2 2
repaired_clean snaplow.qcow2 all snap.qcow2
# an L2 entry pointing at a cluster another entry uses, then at the L1 table.
damage $base shared.qcow2 l2:1=data0+copied
all_modes shared.qcow2 2
repaired_clean shared.qcow2 all
damage $base overlap.qcow2 "l2:1=$(python3 -c "import struct;print(struct.unpack_from('>Q',open('$base','rb').read(),40)[0])")+copied"
all_modes overlap.qcow2 2
# OFLAG_COPIED cleared on an L2 entry and on an L1 entry; set on a shared one.
damage $base copied.qcow2 l2:0=data0 l1:0=l2
all_modes copied.qcow2 2
expect_match "$(cat q.lines)" 'Repairing OFLAG_COPIED L2 cluster: l1_index=0' "copied lines"
repaired_clean copied.qcow2 leaks base.orig
damage snap.qcow2 snapcopied.qcow2 l2:20=data20+copied
all_modes snapcopied.qcow2 2
repaired_clean snapcopied.qcow2 all snap.qcow2
# L1/L2 entries: unaligned, past the end of the file, reserved bits.
damage $base l2unaligned.qcow2 l1:0=l2+512+copied
all_modes l2unaligned.qcow2 2
damage $base l2past.qcow2 l1:0=0x4000000+copied
all_modes l2past.qcow2 2
damage $base dataunaligned.qcow2 l2:0=data0+512+copied
all_modes dataunaligned.qcow2 2
damage $base datapast.qcow2 l2:2=0x5000000+copied
all_modes datapast.qcow2 2
damage $base reserved.qcow2 l1:0=l2+copied+0x1000000000000000 l2:3=data3+copied+2
all_modes reserved.qcow2 2
# a preallocated zero cluster at an unaligned offset: -r all makes it zero.
damage $base zerounaligned.qcow2 l2:1=data1+512+copied+1
all_modes zerounaligned.qcow2 2
repaired_clean zerounaligned.qcow2 all
# refcount structure: a block with refcount 2 (it is also the L2 table), a
# block past the end of the file (-r all grows the file, as qemu-img).
damage $base rbl2.qcow2 rt:0=l2
all_modes rbl2.qcow2 2
repaired_clean rbl2.qcow2 all base.orig
damage $base rbpast.qcow2 rt:1=0x3000000
all_modes rbpast.qcow2 2
repaired_clean rbpast.qcow2 all base.orig
# Rebuilding the refcount structure where qemu-img gives up: reserved bits
# in a refcount table entry (qemu-img's own overlap check then refuses to
# write the new block over the old one, which nothing references), an
# unaligned refcount block (qemu-img marks the image corrupt and stops).
# Everything up to the repair is as qemu-img does it; after imgtool's
# repair the image is clean and reads the same.
damage $base rtreserved.qcow2 "u64:$(python3 -c "import struct;print(struct.unpack_from('>Q',open('$base','rb').read(),48)[0])")=0x20001"
damage $base rbunaligned.qcow2 rt:0=0x20200
for img in rtreserved.qcow2 rbunaligned.qcow2; do
    same_check $img
    same_check $img --output=json
    same_check $img -r leaks
    repaired_clean $img all base.orig
done
same_check rtreserved.qcow2
expect_eq "$IRC" 2 "rtreserved: exit status"
same_check rbunaligned.qcow2
expect_eq "$IRC" 1 "rbunaligned: check failed"
expect_match "$(cat i.lines)" "^qcow2: Image is corrupt: Refblock offset 0x20200 unaligned" "rbunaligned"
# compressed clusters: their refcounts, OFLAG_COPIED, subcluster bitmaps.
damage zlib.qcow2 cleak.qcow2 ref+1:data0
all_modes cleak.qcow2 3
repaired_clean cleak.qcow2 leaks zlib.qcow2
damage zstd.qcow2 clow.qcow2 ref-1:data0
all_modes clow.qcow2 2
damage zlib.qcow2 ccopied.qcow2 "l2:0=$(python3 -c "import struct;print(struct.unpack_from('>Q',open('zlib.qcow2','rb').read(),0x50000)[0]|1<<63)")"
all_modes ccopied.qcow2 2
damage compel2.qcow2 cbitmap.qcow2 l2b:0=1
all_modes cbitmap.qcow2 2
damage m12.qcow2 el2bad.qcow2 l2b:0=0xffffffffffffffff l2b:20=3
all_modes el2bad.qcow2 2
# refcount widths 1 .. 64: too high and too low.
for i in 4 5 6 7 9 10; do
    damage m$i.qcow2 w$i.qcow2 ref+1:data0 ref-1:data1
    all_modes w$i.qcow2 2
    repaired_clean w$i.qcow2 all m$i.qcow2
done
# snapshots: an unaligned or too large snapshot L1 table.
damage snap.qcow2 snapunal.qcow2 snapl1:512
all_modes snapunal.qcow2 2
damage snap.qcow2 snapbig.qcow2 snapl1size:0x1000000
all_modes snapbig.qcow2 2

# --- persistent bitmaps: their clusters are referenced, bad entries are
# corruptions, bitmaps in use get a warning ---
ok qemu-img create -f qcow2 bm.qcow2 8M
ok qemu-img bitmap --add bm.qcow2 b0
ok qemu-img bitmap --add -g 4k bm.qcow2 b1
ok qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 5M 64k' bm.qcow2
ok imgtool bitmap --dump --output=json bm.qcow2 b1
cp .out b1.json
ok qemu-img info --output=json bm.qcow2
python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"]["bitmaps"])' \
    < .out > bitmaps.txt
expect_match "$(cat bitmaps.txt)" "'name': 'b1'" "bitmaps listed"
NOBYTES=1 all_modes bm.qcow2 0
# bitmaps_intact IMG: still the same bitmaps, with the same bits.
bitmaps_intact() {
    ok qemu-img info --output=json "$1"
    expect_eq "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["format-specific"]["data"]["bitmaps"])' < .out)" \
        "$(cat bitmaps.txt)" "$1: bitmaps"
    ok imgtool bitmap --dump --output=json "$1" b1
    expect_eq "$(out)" "$(cat b1.json)" "$1: bitmap b1"
}
# qemu-img stores the bitmaps again when a repair closes the image, so the
# repaired files differ from imgtool's (which leaves them alone): compare
# the results, not the bytes.
damage bm.qcow2 bmleak.qcow2 ref+1:bmdir ref+2:bmdata1
damage bm.qcow2 bmzero.qcow2 ref-1:bmdir ref-1:bmtable1
NOBYTES=1 all_modes bmleak.qcow2 3
repaired_clean bmleak.qcow2 leaks bm.qcow2
bitmaps_intact r.qcow2
repaired_clean bmleak.qcow2 all bm.qcow2
bitmaps_intact r.qcow2
same_check bmzero.qcow2
expect_eq "$IRC" 2 "bmzero: exit status"
same_check bmzero.qcow2 --output=json
NOBYTES=1 same_check bmzero.qcow2 -r all
# -r leaks cannot repair it (qemu-img then fails to store its bitmaps too).
run_both bmzero.qcow2 -r leaks
expect_eq "$IRC/$QRC" 1/1 "bmzero -r leaks: exit status"
expect_match "$(cat i.lines)" "ERROR need to rebuild refcount structures" "bmzero -r leaks"
expect_match "$(cat q.lines)" "ERROR need to rebuild refcount structures" "bmzero -r leaks"
repaired_clean bmzero.qcow2 all bm.qcow2
bitmaps_intact r.qcow2
# A bitmap table entry with reserved bits: qemu-img cannot open the image;
# imgtool counts a corruption (and the data cluster it no longer trusts
# as leaked).
damage bm.qcow2 bmbad.qcow2 u64:bmtable1=bmdata1+2
expect_status 1 qemu-img check bmbad.qcow2
expect_status 2 imgtool check bmbad.qcow2
expect_match "$(err)" "^ERROR bmbad.qcow2: bitmap 'b1': bitmap table entry 0 \(0x[0-9a-f]{16}\) is invalid" "bmbad"
expect_match "$(out)" "1 errors were found" "bmbad: counted"
# A bitmap left in use (QEMU killed): the same check, plus one warning.
cp bm.qcow2 inuse.qcow2
(qemu-io -c 'write -P 3 2M 64k' -c 'sigraise 9' inuse.qcow2; true) >/dev/null 2>&1
run_both inuse.qcow2
expect_eq "$IRC" "$QRC" "inuse: exit status"
expect_eq "$(cat i.out)" "$(cat q.out)" "inuse: summary"
expect_eq "$(cat i.lines)" "Warning: bitmap 'b0' is inconsistent (the image was not closed cleanly): remove it with 'imgtool bitmap --remove'
Warning: bitmap 'b1' is inconsistent (the image was not closed cleanly): remove it with 'imgtool bitmap --remove'$(cat q.lines)" "inuse: warnings"

# --- dirty images (lazy refcounts) ---
# qemu-io killed with refcount updates still in memory: corruptions (exit
# 2), the dirty bit set; -r all rebuilds and clears it.
ok qemu-img create -f qcow2 -o lazy_refcounts=on lazy.qcow2 4M
(qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 2M 64k' -c 'sigraise 9' lazy.qcow2; true) \
    >/dev/null 2>&1
ok qemu-img info --output=json lazy.qcow2
expect_match "$(out)" '"dirty-flag": true' "lazy: dirty"
same_check lazy.qcow2
expect_eq "$IRC" 2 "lazy: exit status"
same_check lazy.qcow2 --output=json
same_check lazy.qcow2 -r all
same_check lazy.qcow2 -r all --output=json
# -r leaks cannot repair it: imgtool keeps the dirty bit (qemu-img clears
# it when it closes the image, which hides the damage from QEMU).
run_both lazy.qcow2 -r leaks
expect_eq "$IRC" "$QRC" "lazy -r leaks: exit status"
expect_eq "$(cat i.lines)" "$(cat q.lines)" "lazy -r leaks: lines"
ok imgtool info --output=json i.qcow2
expect_match "$(out)" '"dirty-flag": true' "lazy -r leaks keeps the dirty bit"
repaired_clean lazy.qcow2 all
ok imgtool info --output=json r.qcow2
expect_match "$(out)" '"dirty-flag": false' "lazy -r all clears the dirty bit"
ok qemu-io -c 'read -P 1 0 1M' -c 'read -P 2 2M 64k' -c 'read -P 0 1M 1M' r.qcow2
# the dirty bit with a leak: -r leaks is enough and clears the bit.
damage $base dirtyleak.qcow2 'incompat|=1' ref+3:0
all_modes dirtyleak.qcow2 3
repaired_clean dirtyleak.qcow2 leaks base.orig
ok imgtool info --output=json r.qcow2
expect_match "$(out)" '"dirty-flag": false' "dirty leak: bit cleared"
# the corrupt bit is cleared by a successful repair.
damage $base corruptbit.qcow2 'incompat|=2' ref+1:0
all_modes corruptbit.qcow2 3
repaired_clean corruptbit.qcow2 leaks base.orig
ok imgtool info --output=json r.qcow2
expect_match "$(out)" '"corrupt": false' "corrupt bit cleared"

# --- crash safety: each repair killed before its first write, its second,
# ... until it completes (the IMGTOOL_FAULT_AFTER_WRITES hook of
# formats/file.c).  After every kill the image reads as before, qemu-img can
# still check it (no unreadable structure), and a new -r all makes it clean.
for img in lazy.qcow2 zero.qcow2 shared.qcow2 copied.qcow2 zerounaligned.qcow2 \
           rbunaligned.qcow2 bmleak.qcow2; do
    n=0
    while :; do
        cp $img crash.qcow2
        rc=$( (exec 2>/dev/null; IMGTOOL_FAULT_AFTER_WRITES=$n "$IMGTOOL" check -r all \
               crash.qcow2 >/dev/null; echo $?) )
        qrc=0
        qemu-img check crash.qcow2 > /dev/null 2>&1 || qrc=$?
        checks=$((checks + 1))
        [ $qrc != 1 ] || [ $img = rbunaligned.qcow2 ] ||
            die "$img killed after $n writes: qemu-img check fails: $(qemu-img check crash.qcow2 2>&1)"
        case $img in
        zerounaligned.qcow2|shared.qcow2) ;;   # the repair changes what reads return
        *) same_content $img crash.qcow2 ;;
        esac
        [ "$rc" = 137 ] || break
        repaired_clean crash.qcow2 all
        n=$((n + 1))
    done
    expect_eq "$rc" 0 "$img: repair completes"
    [ $n -gt 0 ] || die "$img: the repair wrote nothing"
done

# --- images imgtool writes check clean with imgtool check too ---
for spec in "compat=0.10,cluster_size=512" "cluster_size=4k,refcount_bits=1" \
            "cluster_size=64k,refcount_bits=64" "cluster_size=64k,extended_l2=on" \
            "cluster_size=2M"; do
    rm -f mine.qcow2
    ok imgtool create -f qcow2 -o "$spec" mine.qcow2 8M
    ok imgtool io -f qcow2 -c 'write -P 1 0 3M' -c 'write -P 2 100k 300k' -c 'write -z 1M 70k' \
        -c 'discard 2M 512k' -c 'write -z -u 2560k 64k' -c 'write -P 3 8000k 192k' mine.qcow2
    ok imgtool check mine.qcow2
    expect_eq "$(out)" "$(qemu-img check mine.qcow2)" "$spec: imgtool-written image"
    ok imgtool convert -c -O qcow2 mine.qcow2 minec.qcow2
    same_check minec.qcow2
    expect_eq "$IRC" 0 "$spec: compressed by imgtool"
    rm -f minec.qcow2
done

# --- formats without checks: exit 63, as qemu-img ---
ok qemu-img create -f raw r.raw 1M
expect_status 63 imgtool check r.raw
expect_status 63 qemu-img check r.raw
passed
