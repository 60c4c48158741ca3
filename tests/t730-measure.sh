# measure: the same output as qemu-img measure (human and JSON, stdout
# byte for byte, exit status), for qcow2 and raw targets over a matrix of
# cluster sizes, refcount widths, extended L2, compat, preallocation and
# backing files, from --size and from images: qcow2 with data, zero,
# compressed and half-written clusters and bitmaps, a v2 image, raw with
# holes, chains with a shorter or longer backing file, extended L2.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# same_measure ARGS...: stdout and exit status equal to qemu-img's; on
# failure the first line of the error message is the same too (without
# qemu-img's final period).
same_measure() {
    local ms=0 qs=0
    imgtool measure "$@" >mine.out 2>mine.err || ms=$?
    qemu-img measure -U "$@" >ref.out 2>ref.err || qs=$?
    checks=$((checks + 1))
    [ "$ms" = "$qs" ] || die "measure $*: exit $ms, qemu-img $qs: $(cat mine.err ref.err)"
    if [ "$qs" != 0 ] && [[ " $* " == *" --output=json "* ]]; then
        # A failed JSON run ends with the error object (imgtool(1), JSON ERRORS).
        expect_match "$(tail -n 1 mine.out)" '^\{"error": \{"class": "GenericError", "desc": ".+"\}\}$'
        sed -i '$d' mine.out
    fi
    cmp -s mine.out ref.out || die "measure $*: $(cat mine.out) /// qemu-img: $(cat ref.out)"
    if [ "$qs" != 0 ]; then
        expect_eq "$(sed -En '1s/^imgtool( measure)?: //p' mine.err)" \
            "$(sed -n '1{s/^qemu-img: //;s/\.$//;p}' ref.err)" "measure $* error"
    fi
}

qcow2_targets=(
    "" "cluster_size=512" "cluster_size=512,refcount_bits=1" "cluster_size=4k,refcount_bits=64"
    "cluster_size=16k,extended_l2=on" "cluster_size=2M,refcount_bits=8"
    "cluster_size=2M,extended_l2=on,refcount_bits=2" "refcount_bits=4" "refcount_bits=32"
    "compat=0.10" "compat=0.10,cluster_size=1k" "backing_file=b.qcow2"
    "preallocation=metadata" "preallocation=falloc,cluster_size=8k" "preallocation=full"
    "lazy_refcounts=on,compression_type=zstd"
)
measure_matrix() {
    local o
    for o in "${qcow2_targets[@]}"; do
        same_measure -O qcow2 ${o:+-o "$o"} "$@"
    done
    same_measure --output=json -O qcow2 -o cluster_size=1k "$@"
    same_measure "$@"
    same_measure -O raw --output=json "$@"
}

# 1. --size: zero, one byte, unaligned, large.
for size in 0 1 1000 1G 100G 4097k 3T 64T; do
    measure_matrix --size "$size"
done

# 2. Images.
ok qemu-img create -q -f qcow2 d.qcow2 100M
ok qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 10M 100k' -c 'write -z 20M 1M' \
    -c 'write -c -P 3 30M 64k' -c 'write -P 4 99M 4k' -c 'discard 0 64k' d.qcow2
measure_matrix d.qcow2
ok qemu-img bitmap --add d.qcow2 b1
ok qemu-img bitmap --add -g 512 d.qcow2 a-rather-long-bitmap-name-to-pass-one-entry
ok qemu-img bitmap --add -g 2M --disable d.qcow2 b3
measure_matrix d.qcow2
same_measure -f qcow2 -O qcow2 --output=json d.qcow2

ok qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k v2.qcow2 33M
ok qemu-io -f qcow2 -c 'write -P 5 1M 3M' -c 'write -z 8M 64k' v2.qcow2
measure_matrix v2.qcow2

ok qemu-img create -q -f raw r.raw 50M
ok qemu-io -f raw -c 'write -P 6 0 4k' -c 'write -P 7 1M 12k' -c 'write -P 8 49M 1M' r.raw
measure_matrix r.raw
same_measure -f raw -O qcow2 r.raw

# Unaligned size, extended L2 with partial subclusters, metadata
# preallocation.
ok qemu-img create -q -f qcow2 -o cluster_size=32k,extended_l2=on x.qcow2 $((40 * 1048576 + 5120))
ok qemu-io -f qcow2 -c 'write -P 9 3k 2k' -c 'write -P 9 40M 5k' x.qcow2
measure_matrix x.qcow2
ok qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=16k p.qcow2 20M
measure_matrix p.qcow2

# Chains: the data of every layer counts; past a shorter backing file the
# disk reads as zeroes.
ok qemu-img create -q -f qcow2 -o cluster_size=512 b.qcow2 30M
ok qemu-io -f qcow2 -c 'write -P 1 0 3M' -c 'write -P 1 29M 512' b.qcow2
ok qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 -o cluster_size=2M t.qcow2 60M
ok qemu-io -f qcow2 -c 'write -P 2 1M 100k' -c 'write -P 2 40M 1M' t.qcow2
measure_matrix t.qcow2
ok qemu-img create -q -f qcow2 -b t.qcow2 -F qcow2 t2.qcow2 20M
ok qemu-io -f qcow2 -c 'write -z 0 1M' t2.qcow2
measure_matrix t2.qcow2

# 3. Errors, as qemu-img reports them.
same_measure -O qcow2
same_measure --size 1G d.qcow2
same_measure -O qcow2 -o foo=bar --size 1G
same_measure -O raw -o cluster_size=4k --size 1G
same_measure -O qcow2 -o cluster_size=1000 --size 1G
same_measure -O qcow2 -o cluster_size=8k,extended_l2=on --size 1G
same_measure -O qcow2 -o compat=0.9 --size 1G
same_measure -O qcow2 -o refcount_bits=3 --size 1G
same_measure -O qcow2 -o refcount_bits=128 --size 1G
same_measure -O qcow2 -o compat=0.10,refcount_bits=8 --size 1G
same_measure -O qcow2 -o cluster_size=512 --size 3T
same_measure -O qcow2 -o cluster_size=16k,extended_l2=on --size 65T
same_measure -O qcow2 -o cluster_size=16k,extended_l2=on --size 129T
same_measure -O qcow2 -o help --size 1G
expect_status 1 imgtool measure -O nosuchformat --size 1G
expect_match "$(err)" "unknown format 'nosuchformat'"
expect_status 1 imgtool measure -f qcow2 --size 1G
expect_match "$(err)" "--image-opts, -f, and -l require a filename argument."
expect_status 1 imgtool measure -l s1 --size 1G
expect_match "$(err)" "--image-opts, -f, and -l require a filename argument."
# -l: the image as an internal snapshot recorded it, by name, ID or both.
ok qemu-img create -q -f qcow2 snap.qcow2 64M
ok qemu-io -c 'write -P 1 0 8M' snap.qcow2
ok qemu-img snapshot -c s1 snap.qcow2
ok qemu-io -c 'write -P 2 16M 24M' snap.qcow2
for l in s1 1 snapshot.name=s1 snapshot.id=1 snapshot.id=1,snapshot.name=s1; do
    same_measure -O qcow2 -l $l snap.qcow2
    same_measure -O qcow2 -o cluster_size=4k --output=json -l $l snap.qcow2
done
[ "$(imgtool measure -O qcow2 -l s1 snap.qcow2)" != "$(imgtool measure -O qcow2 snap.qcow2)" ] ||
    die "-l measures the snapshot, not the active image"
expect_status 1 imgtool measure -l nosuch snap.qcow2
expect_eq "$(err)" "imgtool: Failed to load snapshot: snap.qcow2: Can't find snapshot"
expect_status 1 imgtool measure -l snapshot.xx=1 snap.qcow2
expect_match "$(err)" "Failed in parsing snapshot param 'snapshot.xx=1'"
expect_status 1 imgtool measure nonexistent.qcow2
expect_match "$(err)" "nonexistent.qcow2"
expect_status 1 imgtool measure d.qcow2 r.raw
passed
