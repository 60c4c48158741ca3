# qcow2 writes of many clusters in one request: a run of whole clusters
# gets contiguous new clusters and one data write, its L2 entries are set
# in one pass, its refcounts one refcount block at a time.  With 512-byte
# clusters an L2 table covers 32 KiB and a 16-bit refcount block 128 KiB of
# host space, so large writes cross both boundaries many times (and grow
# the refcount table).  Checked against qemu-io's results and with
# qemu-img check; then multi-threaded convert into such images, the
# number of writes a run costs, and crash consistency (killed at every
# write).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

SIZE=$((24 << 20))
# Fresh runs, partial head and tail clusters, in-place runs, zero clusters
# that keep their allocation (whole-cluster writes over them), discarded
# ranges reused by later runs (the free-cluster hint goes back), writes
# across the 16 MiB L2 boundary of 16k extended-L2 images, the disk's end.
OPS=(-c 'write -P 0x11 0 10M' -c 'write -P 0x22 1000 300000' -c 'write -z 64k 64k'
     -c 'write -P 0x33 60k 100k' -c 'discard 200k 100k' -c 'write -P 0x44 150k 200k'
     -c 'write -P 0x55 14M 4M' -c 'write -P 0x66 23M 1M' -c 'write -z -u 5M 1M'
     -c 'discard 7M 512k' -c 'write -P 0x77 4M 4M' -c 'write -P 0x88 20M 100000')

ok qemu-img create -q -f qcow2 base.qcow2 $SIZE
ok qemu-io -f qcow2 -c "write -P 0xbb 0 $SIZE" -c 'write -z 1M 1M' base.qcow2

# 1. The same writes with qemu-io and imgtool io.
for spec in "cluster_size=512" "cluster_size=512,refcount_bits=1" \
            "compat=0.10,cluster_size=512" "cluster_size=4k,refcount_bits=64" \
            "cluster_size=16k,extended_l2=on" "cluster_size=64k"; do
    for backing in none base; do
        rm -f ref.qcow2 mine.qcow2
        bopt=()
        [ $backing = base ] && bopt=(-b base.qcow2 -F qcow2)
        ok qemu-img create -q -f qcow2 -o "$spec" "${bopt[@]}" ref.qcow2 $SIZE
        ok imgtool create -f qcow2 -o "$spec" "${bopt[@]}" mine.qcow2 $SIZE
        ok qemu-io -f qcow2 "${OPS[@]}" ref.qcow2
        ok imgtool io -f qcow2 "${OPS[@]}" mine.qcow2
        checks=$((checks + 1))
        qemu-img compare -U ref.qcow2 mine.qcow2 >/dev/null 2>&1 ||
            die "$spec backing=$backing: contents differ: $(qemu-img compare ref.qcow2 mine.qcow2 2>&1)"
        qemu_clean mine.qcow2
    done
done

# 2. A fresh 10M write with 512-byte clusters: every L2 table's 32 KiB is
# one run of contiguous clusters, the runs separated by metadata, as QEMU
# lays it out: the same data extents (starts and lengths) as qemu-io's.
extents() {
    qemu-img map -U --output=json "$1" | grep '"data": true' |
        sed -n 's/.*"start": \([0-9]*\), "length": \([0-9]*\).*/\1+\2/p'
}
rm -f ref.qcow2 mine.qcow2
ok qemu-img create -q -f qcow2 -o cluster_size=512 ref.qcow2 $SIZE
ok imgtool create -f qcow2 -o cluster_size=512 mine.qcow2 $SIZE
ok qemu-io -f qcow2 -c 'write -P 0x11 0 10M' ref.qcow2
ok imgtool io -f qcow2 -c 'write -P 0x11 0 10M' mine.qcow2
want=$(extents ref.qcow2)
expect_eq "$(wc -l <<<"$want")" 320 "data extents of qemu-io's image"
expect_eq "$(extents mine.qcow2)" "$want" "data extents of imgtool's image"

# 3. A run costs one data write: writing 64 clusters (one L2 table) into a
# fresh image takes as many writes (data and metadata, counted by the
# IMGTOOL_FAULT_AFTER_WRITES hook) as writing one cluster.
# writes_needed ARGS...: the writes `imgtool io ARGS fresh.qcow2` issues.
writes_needed() {
    local n
    for ((n = 0; n < 200; n++)); do
        cp template.qcow2 fresh.qcow2
        if (exec 2>/dev/null; IMGTOOL_FAULT_AFTER_WRITES=$n "$IMGTOOL" io "$@" fresh.qcow2 \
                >/dev/null); then
            echo $n
            return
        fi
    done
    echo "more than 200"
}
ok imgtool create -f qcow2 -o cluster_size=512 template.qcow2 1M
one=$(writes_needed -c 'write -P 1 32k 512')
expect_eq "$(writes_needed -c 'write -P 1 32k 32k')" "$one" "writes for 64 clusters"
# Rewriting them in place is a single write.
ok imgtool io -c 'write -P 1 32k 32k' template.qcow2
expect_eq "$(writes_needed -c 'write -P 2 32k 32k')" 1 "writes for 64 clusters in place"

# 4. convert with many requests in flight into 512-byte and 64k clusters:
# requests cross L2 tables and refcount blocks while others allocate.
head -c $((12 << 20)) /dev/urandom > data
ok qemu-img create -q -f raw src.raw $SIZE
ok dd if=data of=src.raw bs=1M seek=2 conv=notrunc status=none
ok qemu-io -f raw -c 'write -P 0x5a 17M 3M' -c 'write -P 0 15M 1M' src.raw
for cs in 512 64k; do
    for args in "-m 16 --buf-size 20k" "-m 8 --buf-size 1M" "-m 1 --buf-size 4M"; do
        rm -f out.qcow2
        ok imgtool convert $args -O qcow2 -o cluster_size=$cs src.raw out.qcow2
        same_content -f raw -F qcow2 src.raw out.qcow2
        qemu_clean out.qcow2
    done
    # Into an existing image whose clusters are all allocated: in place.
    rm -f pre.qcow2
    ok qemu-img create -q -f qcow2 -o cluster_size=$cs,preallocation=metadata pre.qcow2 $SIZE
    ok imgtool convert -n -m 8 --buf-size 96k src.raw pre.qcow2
    same_content -f raw -F qcow2 src.raw pre.qcow2
    qemu_clean pre.qcow2
done

# 5. Crash consistency: imgtool io killed before each of its writes in
# turn.  Afterwards qemu-img check finds no corruption (leaks are
# allowed), and every cluster holds what it held before a command or after
# one: data reaches the disk before the L2 entry that points to it, the
# refcounts before the L2 table, the L2 table before the L1 entry.
CRASH_OPS=(-c 'write -P 0xbb 1000 100000' -c 'write -P 0xcc 2040k 48k' -c 'write -z 64k 64k'
           -c 'write -P 0xdd 32k 64k' -c 'discard 3M 64k' -c 'write -P 0xee 3M 100k')
# A backing file, so that an unallocated cluster reads neither zeroes nor
# what is written to it.
ok qemu-img create -q -f qcow2 crash-backing.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 0x99 0 4M' crash-backing.qcow2
ok qemu-img create -q -f qcow2 -o cluster_size=512 -b crash-backing.qcow2 -F qcow2 \
    crash-base.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 0xaa 0 1M' -c 'write -P 0xab 3M 1M' crash-base.qcow2
# The states after each prefix of the commands, as raw files.
cp crash-base.qcow2 state.qcow2
ok qemu-img convert -O raw state.qcow2 state0.raw
states=(state0.raw)
for ((i = 0; i < ${#CRASH_OPS[@]}; i += 2)); do
    ok imgtool io "${CRASH_OPS[@]:i:2}" state.qcow2
    ok qemu-img convert -O raw state.qcow2 "state$((i / 2 + 1)).raw"
    states+=("state$((i / 2 + 1)).raw")
done
cat > clusters_ok.py <<'PY'
import sys
got = open(sys.argv[1], "rb").read()
states = [open(f, "rb").read() for f in sys.argv[2:]]
bad = [i for i in range(0, len(got), 512)
       if all(got[i:i + 512] != s[i:i + 512] for s in states)]
if bad:
    sys.exit("clusters matching no state at %s" % ", ".join(hex(i) for i in bad[:8]))
PY
for ((n = 0; ; n++)); do
    ((n < 1000)) || die "imgtool io did not complete within 1000 writes"
    cp crash-base.qcow2 crash.qcow2
    rc=$( (exec 2>/dev/null; IMGTOOL_FAULT_AFTER_WRITES=$n "$IMGTOOL" io "${CRASH_OPS[@]}" \
            crash.qcow2 >/dev/null; echo $?) )
    rc_check=0
    qemu-img check crash.qcow2 >check.out 2>&1 || rc_check=$?
    checks=$((checks + 1))
    [ $rc_check = 0 ] || [ $rc_check = 3 ] ||
        die "killed at write $n: qemu-img check exited $rc_check: $(cat check.out)"
    ok qemu-img convert -O raw crash.qcow2 crash.raw
    checks=$((checks + 1))
    python3 clusters_ok.py crash.raw "${states[@]}" || die "killed at write $n: see above"
    [ "$rc" = 0 ] && break
    expect_eq "$rc" 137 "exit status when killed at write $n"
done
cmp crash.raw "${states[-1]}" || die "the completed run differs from the expected result"
passed
