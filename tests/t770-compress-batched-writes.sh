# convert -c stores the compressed clusters of a request together: their
# bytes are allocated in one go and written with one pwritev per contiguous
# stretch (the unused tail of a host cluster between two stretches is
# written with zeroes), and clusters that do not compress are written as
# one plain run, instead of one small write per cluster.  The images stay
# exactly what QEMU reads: same contents, clean check, the same clusters
# compressed as qemu-img's, with cluster sizes from 4 KiB (several
# compressed clusters per host cluster, tails skipped) to 2 MiB (a batch
# of one).
. "$(dirname "$0")/lib.sh"
need qemu-img strace
"$IMGTOOL" create -f qcow2 probe.qcow2 1M >/dev/null 2>&1 ||
    skip "imgtool create -f qcow2 is not supported yet (needs the qcow2 driver)"
rm -f probe.qcow2

# 6 MiB of compressible text, 2 MiB of random data, a hole, 1 MiB more text.
size=$((12 * 1024 * 1024))
ok qemu-img create -q -f raw src.raw "$size"
seq 1 2000000 | head -c $((6 * 1024 * 1024)) > text
ok dd if=text of=src.raw bs=1M conv=notrunc status=none
head -c $((2 * 1024 * 1024)) /dev/urandom > random
ok dd if=random of=src.raw bs=1M seek=6 conv=notrunc status=none
ok dd if=text of=src.raw bs=1M seek=10 count=1 conv=notrunc status=none

compressed_clusters() {
    qemu-img check -U --output=json "$1" | sed -n 's/.*"compressed-clusters": \([0-9]*\).*/\1/p'
}
# qemu-img map's runs without host offsets, adjacent equal ones merged.
map_runs() {
    qemu-img map -U --output=json "$1" | /usr/bin/python3 -c '
import json, sys
runs = []
for m in json.load(sys.stdin):
    key = (m["depth"], m["present"], m["zero"], m["data"])
    if runs and runs[-1][2] == key and runs[-1][0] + runs[-1][1] == m["start"]:
        runs[-1][1] += m["length"]
    else:
        runs.append([m["start"], m["length"], key])
for r in runs:
    print(*r)'
}
# Writes (pwritev and pwrite64 calls) of one imgtool run.
count_writes() {
    strace -f -c -o "$T/.strace" -e trace=pwritev,pwrite64,pwritev2 "$IMGTOOL" "$@" >/dev/null ||
        die "imgtool $* failed"
    awk '$NF ~ /^pwrite/ { n += $4 } END { print n + 0 }' "$T/.strace"
}

for cs in 4k 64k 2M; do
    for type in zlib zstd; do
        o="-o cluster_size=$cs,compression_type=$type"
        ok qemu-img convert -c -f raw -O qcow2 $o src.raw "q-$cs-$type.qcow2"
        ok imgtool convert -c -f raw -O qcow2 $o src.raw "i-$cs-$type.qcow2"
        same_content -f raw -F qcow2 src.raw "i-$cs-$type.qcow2"
        qemu_clean "i-$cs-$type.qcow2"
        expect_eq "$(compressed_clusters "i-$cs-$type.qcow2")" \
            "$(compressed_clusters "q-$cs-$type.qcow2")" "compressed clusters ($cs, $type)"
        # qemu-img map says the same about every byte (data or zero),
        # host offsets aside.
        expect_eq "$(map_runs "i-$cs-$type.qcow2")" "$(map_runs "q-$cs-$type.qcow2")" \
            "map of i-$cs-$type.qcow2"
    done
done

# With 64 KiB clusters the 9 MiB of data are 144 clusters (112 of them
# compressed, 32 random ones plain): one request in flight writes them
# in a few writes per 2 MiB request plus the metadata (16 today, 154 when
# each cluster was written alone).
rm -f serial.qcow2
n=$(count_writes convert -c -m 1 -f raw -O qcow2 src.raw serial.qcow2)
checks=$((checks + 1))
[ "$n" -le 40 ] || die "convert -c issued $n writes for 144 clusters of data"
same_content -f raw -F qcow2 src.raw serial.qcow2
qemu_clean serial.qcow2
passed
