# imgtool compare gives qemu-img compare's answer (message and exit status)
# with and without -s on a matrix of raw and qcow2 images holding the same
# disk in different ways (plain, compressed, zero clusters, metadata
# preallocation, overlays), and finds the first differing byte wherever it
# lies: at the edges of 8-byte words, 4 KiB blocks, clusters and its 4 MiB
# read requests, in data against data and data against holes; two 1 TiB
# sparse images compare by their few allocated clusters.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

ok qemu-img create -q -f raw r.raw 6M
ok qemu-io -f raw -c 'write -P 1 0 1M' -c 'write -z 2M 64k' -c 'write -P 2 4M 2M' r.raw
ok qemu-img convert -f raw -O qcow2 r.raw q.qcow2
ok qemu-img convert -f raw -O qcow2 -c r.raw c.qcow2
ok qemu-img create -q -f qcow2 -o preallocation=metadata p.qcow2 6M
ok qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 4M 2M' p.qcow2
ok qemu-img create -q -f qcow2 z.qcow2 6M
ok qemu-io -c 'write -P 1 0 1M' -c 'write -z 3M 64k' -c 'write -P 2 4M 2M' z.qcow2
ok qemu-img create -q -f qcow2 -F qcow2 -b q.qcow2 t.qcow2
ok qemu-img create -q -f qcow2 -F qcow2 -b q.qcow2 t2.qcow2
ok qemu-io -c 'write -P 1 0 64k' t2.qcow2
ok qemu-img create -q -f raw r2.raw 6M
ok qemu-io -f raw -c 'write -P 1 0 1M' -c 'write -P 2 4M 1M' r2.raw
truncate -s 7M r3.raw
ok qemu-io -f raw -c 'write -P 1 0 1M' -c 'write -P 2 4M 2M' r3.raw
fmt() { case $1 in *.raw) echo raw ;; *) echo qcow2 ;; esac; }
for a in r.raw q.qcow2 c.qcow2 p.qcow2 z.qcow2 t.qcow2 t2.qcow2 r2.raw r3.raw; do
    for b in r.raw q.qcow2 c.qcow2 p.qcow2 t.qcow2 r3.raw; do
        [ $a = $b ] && continue
        for s in "" -s; do
            qrc=0 irc=0
            q=$(qemu-img compare $s -f $(fmt $a) -F $(fmt $b) $a $b 2>&1) || qrc=$?
            i=$(imgtool compare $s -f $(fmt $a) -F $(fmt $b) $a $b 2>&1) || irc=$?
            expect_eq "$i" "$q" "compare $s $a $b"
            expect_eq "$irc" "$qrc" "compare $s $a $b: exit status"
        done
    done
done

# One byte changed at an edge: imgtool names the offset qemu-img names.
ok qemu-img create -q -f raw base.raw 12M
ok qemu-io -f raw -c 'write -P 7 0 12M' base.raw
ok qemu-img convert -f raw -O qcow2 -o cluster_size=4k base.raw base.qcow2
for off in 0 7 8 4095 4096 65535 65536 $((4 << 20)) $(((4 << 20) - 1)) $(((8 << 20) + 9)) \
           $(((12 << 20) - 1)); do
    for way in data zero; do
        cp base.qcow2 d.qcow2
        if [ $way = data ]; then
            ok qemu-io -c "write -P 9 $off 1" d.qcow2
        else
            # The rest of the 4k cluster is zeroes, not sevens, from off on.
            c=$((off / 4096 * 4096))
            ok qemu-io -c "write -z $c 4k" -c "write -P 7 $c $((off - c))" d.qcow2
        fi
        for pair in "base.raw d.qcow2" "d.qcow2 base.raw" "base.qcow2 d.qcow2"; do
            set -- $pair
            q=$(qemu-img compare -f $(fmt $1) -F $(fmt $2) $1 $2 2>&1)
            expect_status 1 imgtool compare -f $(fmt $1) -F $(fmt $2) $1 $2
            expect_eq "$(out)" "$q" "$way at $off: $pair"
        done
    done
done
# Data against a hole: the first non-zero byte.
ok qemu-img create -q -f qcow2 e.qcow2 12M
for off in 0 9 4096 $(((4 << 20) + 8)); do
    cp e.qcow2 d.qcow2
    ok qemu-io -c "write -P 5 $off 1" d.qcow2
    for pair in "e.qcow2 d.qcow2" "d.qcow2 e.qcow2"; do
        set -- $pair
        expect_status 1 imgtool compare $1 $2
        expect_eq "$(out)" "$(qemu-img compare $1 $2)" "non-zero byte at $off: $pair"
    done
done
# In a partial last sector qemu-img names the byte itself.
ok qemu-img create -q -f raw odd.raw 1000
ok qemu-img create -q -f raw odd2.raw 1000
ok qemu-io -f raw -c 'write -P 1 700 1' odd2.raw
expect_status 1 imgtool compare odd.raw odd2.raw
expect_eq "$(out)" "$(qemu-img compare odd.raw odd2.raw)" "partial sector"
ok qemu-img create -q -f qcow2 odd.qcow2 1000
expect_status 1 imgtool compare -F raw odd.qcow2 odd2.raw
expect_eq "$(out)" "$(qemu-img compare -F raw odd.qcow2 odd2.raw)" "partial sector, unallocated"

# Sizes differ: the tail of the larger image must read as zero.
ok imgtool compare r.raw r3.raw
expect_eq "$(out)" "$(qemu-img compare r.raw r3.raw)" "tail"

# Two 1 TiB sparse images: the answer comes from their allocated clusters.
ok qemu-img create -q -f qcow2 s1.qcow2 1T
ok qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 500G 1M' -c 'write -P 3 1023G 64k' s1.qcow2
cp s1.qcow2 s2.qcow2
ok imgtool compare s1.qcow2 s2.qcow2
expect_eq "$(out)" "Images are identical." "1 TiB sparse"
ok qemu-io -c 'write -P 4 1023G 1' s2.qcow2
expect_status 1 imgtool compare s1.qcow2 s2.qcow2
expect_eq "$(out)" "$(qemu-img compare s1.qcow2 s2.qcow2)" "1 TiB sparse, one byte"
passed
