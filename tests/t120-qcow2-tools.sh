# qcow2 with the subcommands: create (options and qemu-img's rules), info
# (JSON equal to qemu-img's, --backing-chain), convert in every direction
# (checked with qemu-img compare and check), resize grow and shrink.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# same_info ARGS...: imgtool info --output=json equals qemu-img's (as JSON).
same_info() {
    imgtool info --output=json "$@" > mine.json 2>&1 || die "imgtool info $*: $(cat mine.json)"
    qemu-img info -U --output=json "$@" > ref.json
    checks=$((checks + 1))
    python3 - mine.json ref.json <<'PY' || die "info --output=json $* differs from qemu-img"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
if a != b:
    print(json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True), sep="\n")
    sys.exit(1)
PY
}

# create: every option, accepted by qemu-img info/check, info identical.
n=0
for spec in "compat=0.10" "compat=v3,cluster_size=512,refcount_bits=1" \
            "cluster_size=2M,refcount_bits=64,lazy_refcounts=on" \
            "cluster_size=16k,extended_l2=on" "compression_type=zstd" \
            "preallocation=metadata,cluster_size=4k" "compat=0.10,preallocation=metadata"; do
    n=$((n + 1))
    ok imgtool create -f qcow2 -o "$spec" c$n.qcow2 20M
    qemu_clean c$n.qcow2
    same_info c$n.qcow2
    ok qemu-io -f qcow2 -c 'write -P 0x42 1M 3M' -c 'read -P 0 0 1M' c$n.qcow2
    qemu_clean c$n.qcow2
done
ok imgtool info --output=json c3.qcow2
expect_match "$(out)" '"lazy-refcounts": true'
# preallocation=metadata: every guest cluster has a host cluster.
ok qemu-img check --output=json c6.qcow2
expect_match "$(out)" '"allocated-clusters": 5120,'
# A 64 GiB image with 512-byte clusters and 64-bit refcounts needs a large
# L1 table and several refcount blocks: the refcount table grows.
ok imgtool create -f qcow2 -o cluster_size=512,refcount_bits=64 big.qcow2 64G
qemu_clean big.qcow2
ok imgtool io -c 'write -P 1 60G 1M' big.qcow2
qemu_clean big.qcow2

# Invalid combinations are refused with qemu-img's reasons.
expect_status 1 imgtool create -f qcow2 -o extended_l2=on,cluster_size=4k x.qcow2 1M
expect_match "$(err)" 'Extended L2 entries are only supported with cluster sizes of at least 16384 bytes'
expect_status 1 imgtool create -f qcow2 -o compat=0.10,refcount_bits=8 x.qcow2 1M
expect_match "$(err)" 'Different refcount widths than 16 bits require compatibility level 1.1'
expect_status 1 imgtool create -f qcow2 -o compat=0.10,lazy_refcounts=on x.qcow2 1M
expect_match "$(err)" 'Lazy refcounts require compatibility level 1.1'
expect_status 1 imgtool create -f qcow2 -o compat=0.10,compression_type=zstd x.qcow2 1M
expect_status 1 imgtool create -f qcow2 -o cluster_size=1000 x.qcow2 1M
expect_match "$(err)" 'Cluster size must be a power of two between 512 and 2048k'
expect_status 1 imgtool create -f qcow2 -o refcount_bits=3 x.qcow2 1M
expect_match "$(err)" 'Refcount width must be a power of two and may not exceed 64 bits'
expect_status 1 imgtool create -f qcow2 -o foo=1 x.qcow2 1M
expect_match "$(err)" 'foo'
expect_status 1 imgtool create -f qcow2 -o compression_type=lz4 x.qcow2 1M
expect_status 1 imgtool create -f qcow2 -o preallocation=bogus x.qcow2 1M
[ ! -e x.qcow2 ] || die "a refused create left x.qcow2 behind"

# Backing files: -b/-F, size from the backing file, info --backing-chain.
ok qemu-img create -f raw base.raw 16M
ok qemu-io -f raw -c 'write -P 0xb0 0 16M' base.raw
ok imgtool create -f qcow2 -b base.raw -F raw mid.qcow2
ok imgtool create -f qcow2 -o compat=0.10 -b mid.qcow2 -F qcow2 top.qcow2 20M
qemu_clean top.qcow2
same_info top.qcow2
same_info --backing-chain top.qcow2
ok qemu-io -f qcow2 -c 'write -P 0xb1 1M 64k' mid.qcow2
ok imgtool io -c 'write -P 0xb2 3M 5000' -c 'write -z 5M 64k' -c 'read -P 0xb1 1M 64k' top.qcow2
ok qemu-io -f qcow2 -c 'read -P 0xb0 0 1M' -c 'read -P 0xb2 3M 5000' -c 'read -P 0 5M 64k' \
   -c 'read -P 0 16M 4M' top.qcow2
qemu_clean top.qcow2
same_info top.qcow2

# convert: raw -> qcow2, qcow2 -> qcow2 (flattening the chain), -c.
ok imgtool convert -O qcow2 base.raw conv1.qcow2
same_content base.raw conv1.qcow2
qemu_clean conv1.qcow2
ok imgtool convert -O qcow2 -o cluster_size=4k,refcount_bits=1 top.qcow2 flat.qcow2
same_content top.qcow2 flat.qcow2
qemu_clean flat.qcow2
ok imgtool info --output=json flat.qcow2
checks=$((checks + 1))
! grep -q backing-filename <<<"$(out)" || die "convert output kept a backing file"
for ctype in zlib zstd; do
    ok imgtool convert -c -O qcow2 -o compression_type=$ctype top.qcow2 comp-$ctype.qcow2
    same_content top.qcow2 comp-$ctype.qcow2
    qemu_clean comp-$ctype.qcow2
    ok qemu-img check --output=json comp-$ctype.qcow2
    expect_match "$(out)" '"compressed-clusters": [1-9]'
    # qemu-io overwrites compressed clusters of imgtool's image.
    ok qemu-io -f qcow2 -c 'write -P 0x99 100k 8k' comp-$ctype.qcow2
    qemu_clean comp-$ctype.qcow2
done
ok imgtool convert -O raw comp-zstd.qcow2 back.raw
ok qemu-io -f raw -c 'read -P 0x99 100k 8k' -c 'read -P 0xb2 3M 5000' back.raw
ok imgtool convert -O qcow2 -o extended_l2=on,cluster_size=64k comp-zlib.qcow2 ext.qcow2
same_content comp-zlib.qcow2 ext.qcow2
qemu_clean ext.qcow2

# resize: grow and shrink, as qemu-img resize does them.
ok qemu-img create -f qcow2 -o cluster_size=4k r1.qcow2 8M
ok qemu-io -f qcow2 -c 'write -P 0x11 0 8M' r1.qcow2
cp r1.qcow2 r2.qcow2
ok imgtool resize r1.qcow2 +600M
ok qemu-img resize r2.qcow2 +600M
same_content r1.qcow2 r2.qcow2
qemu_clean r1.qcow2
same_info r1.qcow2
ok imgtool io -c 'write -P 0x22 600M 1M' r1.qcow2
ok qemu-io -f qcow2 -c 'write -P 0x22 600M 1M' r2.qcow2
ok imgtool resize --shrink r1.qcow2 3001k
ok qemu-img resize --shrink r2.qcow2 3001k
same_content r1.qcow2 r2.qcow2
qemu_clean r1.qcow2
ok qemu-img check --output=json r1.qcow2
expect_match "$(out)" '"allocated-clusters": 75[0-9],'
# Growing again reads zeroes past the old end, also in the partial last
# cluster (where QEMU 7.2 shows the bytes from before the shrink).
ok imgtool resize r1.qcow2 4M
ok qemu-io -f qcow2 -c 'read -P 0x11 0 3001k' -c 'read -P 0 3001k 1095k' r1.qcow2
qemu_clean r1.qcow2
# With internal snapshots a v3 image grows (as in QEMU 7.2), a v2 image
# does not (QEMU's message); shrinking is refused (QEMU allows it).
ok qemu-img snapshot -c s r2.qcow2
ok imgtool resize r2.qcow2 +1M
qemu_clean r2.qcow2
ok qemu-img snapshot -a s r2.qcow2
same_content r2.qcow2 r1.qcow2
expect_status 1 imgtool resize --shrink r2.qcow2 1M
expect_match "$(err)" 'cannot shrink a qcow2 image with internal snapshots'
ok qemu-img create -q -f qcow2 -o compat=0.10 v2s.qcow2 4M
ok qemu-img snapshot -c s v2s.qcow2
expect_status 1 imgtool resize v2s.qcow2 +1M
expect_match "$(err)" "Can't resize a v2 image which has snapshots"
passed
