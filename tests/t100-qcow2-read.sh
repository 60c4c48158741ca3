# qcow2 read path: images written by qemu-img/qemu-io (v2 and v3, cluster
# sizes 512 B .. 2 MiB, refcount widths 1/16/64, extended L2, compressed,
# a three-deep backing chain, an internal snapshot) read back byte for byte
# as qemu-img convert -O raw gives, and map as qemu-img map does.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io cmp

# The same mixed writes in every image: data, partial clusters, zeroes
# with and without unmap, discards, overwrites.
OPS=(-c 'write -P 0x11 0 100k' -c 'write -P 0x22 1000k 3000' -c 'write -z 3M 1M'
     -c 'write -P 0x33 4M 2M' -c 'write -z -u 5M 300k' -c 'discard 4608k 128k'
     -c 'write -P 0x44 9M 513' -c 'write -P 0x55 15M 1M' -c 'write -z 15872k 4k')

# check_read IMG [nomap]: imgtool's raw conversion equals qemu-img's, both
# compare tools agree, and (unless nomap) the maps are identical.
check_read() {
    local img=$1
    ok imgtool convert -O raw "$img" mine.raw
    ok qemu-img convert -O raw "$img" ref.raw
    checks=$((checks + 1))
    cmp mine.raw ref.raw || die "$img: imgtool convert -O raw differs from qemu-img's"
    ok imgtool compare "$img" ref.raw
    expect_eq "$(out)" "Images are identical." "$img: imgtool compare"
    same_content "$img" mine.raw
    if [ "${2:-}" != nomap ]; then
        ok imgtool map --output=json "$img"
        expect_eq "$(out)" "$(qemu-img map --output=json "$img")" "$img: map --output=json"
    fi
}

n=0
for spec in "compat=0.10,cluster_size=512" "compat=0.10,cluster_size=4k" \
            "compat=0.10,cluster_size=64k" "compat=0.10,cluster_size=2M" \
            "cluster_size=512,refcount_bits=1" "cluster_size=4k,refcount_bits=16" \
            "cluster_size=64k,refcount_bits=64" "cluster_size=2M,refcount_bits=1" \
            "cluster_size=512,refcount_bits=64" "cluster_size=64k,extended_l2=on" \
            "cluster_size=32k,extended_l2=on,refcount_bits=64" "cluster_size=2M,extended_l2=on"; do
    n=$((n + 1))
    ok qemu-img create -f qcow2 -o "$spec" m$n.qcow2 16M
    ok qemu-io -f qcow2 "${OPS[@]}" m$n.qcow2
    check_read m$n.qcow2
done

# Compressed clusters (zlib), including a partial last cluster.
ok qemu-img create -f raw src.raw 3000k
ok qemu-io -f raw -c 'write -P 0x61 0 1M' -c 'write -P 0x62 2M 5000' -c 'write -P 0x63 2900k 100k' src.raw
for cs in 4k 64k 2M; do
    ok qemu-img convert -c -O qcow2 -o cluster_size=$cs src.raw c$cs.qcow2
    check_read c$cs.qcow2 nomap
    ok imgtool map --output=json c$cs.qcow2
    expect_match "$(out)" '"data": true}' "compressed extents carry no offset"
done
# zstd-compressed clusters (compression_type=zstd, incompatible bit 3).
ok qemu-img convert -c -O qcow2 -o compression_type=zstd,cluster_size=64k src.raw zstd.qcow2
check_read zstd.qcow2 nomap
ok imgtool info --output=json zstd.qcow2
expect_match "$(out)" '"compression-type": "zstd"' "zstd in info"
# Compressed clusters partly overwritten by qemu-io.
ok qemu-io -f qcow2 -c 'write -P 0x70 4k 4k' -c 'write -z 64k 64k' c64k.qcow2
check_read c64k.qcow2 nomap

# A three-deep backing chain: raw base, qcow2 middle (v2), qcow2 top.
ok qemu-img create -f raw base.raw 16M
ok qemu-io -f raw -c 'write -P 0xb0 0 16M' base.raw
ok qemu-img create -f qcow2 -o compat=0.10 -b base.raw -F raw mid.qcow2
ok qemu-io -f qcow2 -c 'write -P 0xb1 1M 1M' -c 'write -z 3M 64k' mid.qcow2
ok qemu-img create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 20M
ok qemu-io -f qcow2 "${OPS[@]}" -c 'write -P 0xb2 17M 64k' top.qcow2
check_read top.qcow2
ok imgtool info --output=json top.qcow2
expect_match "$(out)" '"backing-filename": "mid.qcow2"' "backing name"
expect_match "$(out)" '"backing-filename-format": "qcow2"' "backing format"
# The same chain through a subdirectory: names resolve relative to the image.
mkdir sub && ok qemu-img create -f qcow2 -b ../top.qcow2 -F qcow2 sub/leaf.qcow2
check_read sub/leaf.qcow2

# An internal snapshot: contents after it diverge, the snapshot is listed.
ok qemu-img create -f qcow2 snap.qcow2 8M
ok qemu-io -f qcow2 -c 'write -P 0x31 0 2M' snap.qcow2
ok qemu-img snapshot -c first snap.qcow2
ok qemu-io -f qcow2 -c 'write -P 0x32 1M 64k' -c 'discard 0 64k' snap.qcow2
check_read snap.qcow2
ok imgtool info --output=json snap.qcow2
expect_match "$(out)" '"name": "first"' "snapshot listed"
# Writing it keeps the snapshot intact (copy-on-write of shared clusters).
ok imgtool io -c 'write -P 0x33 1536k 64k' -c 'write -z 0 512k' snap.qcow2
qemu_clean snap.qcow2
ok qemu-img snapshot -a first snap.qcow2
ok qemu-io -f qcow2 -c 'read -P 0x31 0 2M' snap.qcow2
expect_match "$(out)" 'read 2097152/2097152'
passed
