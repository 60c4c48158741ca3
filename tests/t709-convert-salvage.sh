# convert --salvage as qemu-img's: a source read that fails is retried
# sector by sector; each sector that still fails is written as zeroes with
# qemu-img's warning, and the convert succeeds.  Without --salvage the
# convert fails and creates nothing.  The source: a compressed qcow2 whose
# second cluster's compressed data is overwritten.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io /usr/bin/python3

ok qemu-img create -q -f raw p.raw 1M
ok qemu-io -f raw -c 'write -P 5 0 192k' -c 'write -P 7 512k 64k' p.raw
ok qemu-img convert -c -O qcow2 p.raw c.qcow2
# Cluster 1's L2 entry (L1[0] -> L2[1]): overwrite 64 bytes of its
# compressed data.
/usr/bin/python3 - c.qcow2 <<'PY' || die "cannot corrupt c.qcow2"
import struct, sys
f = open(sys.argv[1], 'r+b')
h = f.read(72)
cluster_bits = struct.unpack('>I', h[20:24])[0]
l1 = struct.unpack('>Q', h[40:48])[0]
f.seek(l1)
l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2 + 8)
entry = struct.unpack('>Q', f.read(8))[0]
assert entry & (1 << 62), "cluster 1 is not compressed"
f.seek(entry & ((1 << (62 - (cluster_bits - 8))) - 1))
f.write(b'\xff' * 64)
PY

# Without --salvage: both fail, nothing is created.
expect_status 1 qemu-img convert -O raw c.qcow2 q.raw
expect_status 1 imgtool convert -O raw c.qcow2 i.raw
[ ! -e i.raw ] || die "a failed convert created its target"

for fmt in raw qcow2; do
    expect_status 0 qemu-img convert --salvage -O $fmt c.qcow2 q.$fmt
    qerr=$(err)
    expect_status 0 imgtool convert --salvage -O $fmt c.qcow2 i.$fmt
    # 128 warnings, one per sector of the bad cluster, in order.
    expect_eq "$(err)" "${qerr//qemu-img:/imgtool:}" "-O $fmt: warnings as qemu-img's"
    expect_eq "$(err | wc -l)" 128 "-O $fmt: one warning per sector"
    expect_eq "$(err | head -n 1)" "imgtool: warning: error while reading offset 65536: Input/output error" \
        "-O $fmt: first warning"
    same_content -f $fmt -F $fmt q.$fmt i.$fmt
    expect_eq "$(qemu-img map -f $fmt --output=json i.$fmt | sed 's/, "offset": [0-9]*//')" \
        "$(qemu-img map -f $fmt --output=json q.$fmt | sed 's/, "offset": [0-9]*//')" \
        "-O $fmt: allocation as qemu-img's"
done
# The bad cluster reads as zeroes, the rest as the source.
ok qemu-io -f raw -c 'read -P 5 0 64k' -c 'read -P 0 64k 64k' -c 'read -P 5 128k 64k' \
    -c 'read -P 7 512k 64k' i.raw
expect_eq "$(out | grep -c 'verification failed')" 0 "salvaged contents"
qemu_clean i.qcow2
passed
