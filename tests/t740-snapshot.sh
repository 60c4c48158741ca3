# snapshot -l/-c/-a/-d: internal snapshots made by imgtool are listed,
# checked and applied by qemu-img and the other way round; refcounts and
# COPIED flags pass qemu-img check after every step; apply makes the disk
# read as at snapshot time (qemu-img compare against a copy taken then);
# -l prints what qemu-img snapshot -l prints; apply is refused with dirty
# bitmaps, as qemu-img refuses it.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

same_list() {
    qemu-img snapshot -U -l "$1" > ref.txt || die "qemu-img snapshot -l $1"
    ok imgtool snapshot -l "$1"
    checks=$((checks + 1))
    out | cmp -s - ref.txt || die "snapshot -l $1: $(out) /// qemu-img: $(cat ref.txt)"
}
# strict_clean IMG: qemu-img check finds nothing at all (no leaks either).
strict_clean() {
    checks=$((checks + 1))
    local o; o=$(qemu-img check -U "$1" 2>&1) || die "qemu-img check $1: $o"
    grep -q "No errors were found" <<<"$o" || die "qemu-img check $1: $o"
    grep -qi "leak" <<<"$o" && die "qemu-img check $1: $o"
    ok imgtool check "$1"
}

for spec in "cluster_size=64k,refcount_bits=4" "compat=0.10,cluster_size=512" \
            "cluster_size=16k,extended_l2=on,refcount_bits=64"; do
    rm -f d.qcow2 v*.qcow2
    ok qemu-img create -q -f qcow2 -o "$spec" d.qcow2 8M
    ok qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -c -P 7 2M 64k' -c 'write -z 3M 64k' d.qcow2
    ok qemu-img convert -O qcow2 d.qcow2 v1.qcow2
    ok imgtool snapshot -c first d.qcow2
    strict_clean d.qcow2
    same_list d.qcow2
    # Writes after the snapshot copy the shared clusters.
    ok qemu-io -f qcow2 -c 'write -P 2 0 512k' -c 'write -P 3 5M 64k' -c 'write -z 2M 64k' d.qcow2
    strict_clean d.qcow2
    # imgtool's own writes copy shared clusters too.
    ok imgtool io -c 'write -P 6 768k 64k' -c 'write -z 3M 64k' -c 'discard 6M 64k' d.qcow2
    strict_clean d.qcow2
    ok qemu-img convert -O qcow2 d.qcow2 v2.qcow2
    ok imgtool snapshot -c second d.qcow2
    ok imgtool snapshot -c second d.qcow2     # names need not be unique (qemu-img)
    same_list d.qcow2
    ok qemu-io -f qcow2 -c 'write -P 4 0 64k' -c 'discard 5M 64k' d.qcow2
    ok qemu-img convert -O qcow2 d.qcow2 v3.qcow2
    strict_clean d.qcow2
    # Apply by name and by ID, in every order; qemu-img agrees.
    ok imgtool snapshot -a first d.qcow2
    strict_clean d.qcow2
    same_content d.qcow2 v1.qcow2
    ok qemu-io -f qcow2 -c 'write -P 5 1M 64k' d.qcow2
    strict_clean d.qcow2
    ok imgtool snapshot -a 2 d.qcow2
    same_content d.qcow2 v2.qcow2
    ok qemu-img snapshot -a first d.qcow2
    same_content d.qcow2 v1.qcow2
    ok imgtool snapshot -a 3 d.qcow2
    same_content d.qcow2 v2.qcow2
    strict_clean d.qcow2
    # Delete (by name, the first one so named) and check what is left.
    ok imgtool snapshot -d second d.qcow2
    strict_clean d.qcow2
    same_list d.qcow2
    ok qemu-img snapshot -a 3 d.qcow2
    same_content d.qcow2 v2.qcow2
    ok imgtool snapshot -d first d.qcow2
    ok imgtool snapshot -d second d.qcow2
    strict_clean d.qcow2
    same_content d.qcow2 v2.qcow2
    ok imgtool snapshot -l d.qcow2
    expect_eq "$(out)" "" "snapshot -l without snapshots"
done

# qemu-img's snapshots: read back, applied and deleted by imgtool, and
# imgtool's deleted by qemu-img.
rm -f d.qcow2
ok qemu-img create -q -f qcow2 d.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 1 0 3M' d.qcow2
ok qemu-img convert -O qcow2 d.qcow2 v1.qcow2
ok qemu-img snapshot -c q1 d.qcow2
ok qemu-io -f qcow2 -c 'write -P 2 1M 1M' d.qcow2
ok imgtool snapshot -c i1 d.qcow2
ok qemu-img snapshot -c q2 d.qcow2
same_list d.qcow2
ok imgtool snapshot -a q1 d.qcow2
same_content d.qcow2 v1.qcow2
ok imgtool snapshot -d q1 d.qcow2
ok qemu-img snapshot -d i1 d.qcow2
strict_clean d.qcow2
ok imgtool snapshot -d q2 d.qcow2
strict_clean d.qcow2
same_content d.qcow2 v1.qcow2

# Apply across a resize: the snapshot's disk size comes back.
rm -f d.qcow2
ok qemu-img create -q -f qcow2 d.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 1 0 4M' d.qcow2
ok qemu-img convert -O qcow2 d.qcow2 v1.qcow2
ok imgtool snapshot -c small d.qcow2
ok qemu-img resize -q d.qcow2 600M
ok qemu-io -f qcow2 -c 'write -P 2 500M 1M' d.qcow2
ok imgtool snapshot -a small d.qcow2
strict_clean d.qcow2
same_content d.qcow2 v1.qcow2
ok qemu-img info --output=json d.qcow2
expect_match "$(out)" '"virtual-size": 4194304,'

# -l of a long name, a VM state, a VM clock over 100 hours and no icount
# (fields patched in, as a VM would have recorded them).
ok qemu-img create -q -f qcow2 l.qcow2 4M
ok qemu-img snapshot -c a-very-long-snapshot-name-indeed l.qcow2
ok imgtool snapshot -c s2 l.qcow2
python3 - l.qcow2 <<'PY' || die "cannot patch the snapshot table"
import struct, sys
f = open(sys.argv[1], "r+b")
off = struct.unpack(">Q", f.read(72)[64:72])[0]
f.seek(off + 24); f.write(struct.pack(">QI", 400000123456789, 5 << 20))
f.seek(off + 40); f.write(struct.pack(">QQQ", 5 << 20, 4 << 20, 2**64 - 1))
PY
same_list l.qcow2
ok imgtool snapshot -d s2 l.qcow2
same_list l.qcow2
strict_clean l.qcow2

# Refusals, as qemu-img refuses.
ok qemu-img bitmap --add d.qcow2 bm
expect_status 1 qemu-img snapshot -a small d.qcow2
expect_status 1 imgtool snapshot -a small d.qcow2
expect_match "$(err)" "Could not apply snapshot 'small': d.qcow2: Device has active dirty bitmaps"
ok qemu-img bitmap --disable d.qcow2 bm
expect_status 1 imgtool snapshot -a small d.qcow2
expect_status 1 imgtool snapshot -a nosuch d.qcow2
expect_match "$(err)" "Could not apply snapshot 'nosuch'"
expect_status 1 imgtool snapshot -d 1 d.qcow2        # -d takes a name, as qemu-img's
expect_match "$(err)" "Could not delete snapshot '1'"
expect_status 1 imgtool snapshot -c x -l d.qcow2
expect_match "$(err)" "Cannot mix"
ok qemu-img create -q -f raw r.raw 1M
expect_status 1 imgtool snapshot -c x r.raw
expect_match "$(err)" "does not support internal snapshots"
ok imgtool snapshot r.raw
expect_eq "$(out)" "" "snapshot -l of raw"
passed
