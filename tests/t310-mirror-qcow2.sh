# imgtool mirror on qcow2 backing chains: --sync=full|top|none, --base,
# new targets with absolute and relative backing names, existing targets;
# every result checked with qemu-img compare and qemu-img check.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# base <- snap1 <- top, data in every layer, zeroes over base data in top.
ok qemu-img create -q -f qcow2 -o cluster_size=64k base.qcow2 32M
ok qemu-io -c 'write -P 0x11 0 4M' -c 'write -P 0x12 16M 2M' base.qcow2
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 snap1.qcow2
ok qemu-io -c 'write -P 0x21 1M 1M' -c 'write -P 0x22 20M 512k' snap1.qcow2
ok qemu-img create -q -f qcow2 -o cluster_size=4k -b snap1.qcow2 -F qcow2 top.qcow2
ok qemu-io -c 'write -P 0x31 1536k 8k' -c 'write -z 16M 64k' -c 'write -P 0x32 31M 1M' top.qcow2

# full: flattened, no backing file.
ok imgtool mirror -q top.qcow2 full.qcow2
same_content top.qcow2 full.qcow2
qemu_clean full.qcow2
expect_eq "$(qemu-img info --output=json full.qcow2 | grep -c backing-filename)" 0 "backing of a full copy"
expect_eq "$(qemu-img info --output=json full.qcow2 | grep '"format"' | tr -d ' ,')" '"format":"qcow2"' "target format follows the source"

# top: only the top layer; the target is backed by snap1 (absolute name).
ok imgtool mirror -q --sync=top top.qcow2 topcopy.qcow2
same_content top.qcow2 topcopy.qcow2
qemu_clean topcopy.qcow2
expect_eq "$(qemu-img info --output=json topcopy.qcow2 | sed -n 's/.*"backing-filename": "\(.*\)".*/\1/p')" "$T/snap1.qcow2" "backing name"
top_alloc=$(qemu-img map --output=json top.qcow2 | grep -c '"depth": 0, "present": true')
copy_alloc=$(qemu-img map --output=json topcopy.qcow2 | grep -c '"depth": 0, "present": true')
expect_eq "$copy_alloc" "$top_alloc" "allocated runs of the top copy"

# relative-paths: the backing name is relative to the target's directory.
mkdir sub
ok imgtool mirror -q --sync=top --mode=relative-paths top.qcow2 sub/rel.qcow2
expect_eq "$(qemu-img info --output=json sub/rel.qcow2 | sed -n 's/.*"backing-filename": "\(.*\)".*/\1/p')" "../snap1.qcow2" "relative backing name"
same_content top.qcow2 sub/rel.qcow2

# --base: everything above base in one step; base becomes the backing file.
ok imgtool mirror -q --base=base.qcow2 top.qcow2 above.qcow2
same_content top.qcow2 above.qcow2
qemu_clean above.qcow2
expect_eq "$(qemu-img info --output=json above.qcow2 | sed -n 's/.*"backing-filename": "\(.*\)".*/\1/p')" "$T/base.qcow2" "backing with --base"
expect_status 1 imgtool mirror --base=full.qcow2 top.qcow2 nope.qcow2
expect_match "$(err)" 'full.qcow2: not in the backing chain of top.qcow2'

# none: nothing copied, the target is an overlay of the source.
ok imgtool mirror -q --sync=none top.qcow2 overlay.qcow2
same_content top.qcow2 overlay.qcow2
expect_eq "$(qemu-img map --output=json overlay.qcow2 | grep -c '"depth": 0, "present": true')" 0 "data in a sync=none target"

# Existing qcow2 target holding other data: made identical, never truncated.
ok qemu-img create -q -f qcow2 -o cluster_size=16k existing.qcow2 32M
ok qemu-io -c 'write -P 0x99 0 32M' existing.qcow2
ok imgtool mirror -q top.qcow2 existing.qcow2
same_content top.qcow2 existing.qcow2
qemu_clean existing.qcow2

# qcow2 to raw and raw to qcow2 with -O.
ok imgtool mirror -q -O raw top.qcow2 flat.raw
same_content top.qcow2 flat.raw
ok imgtool mirror -q -O qcow2 -o cluster_size=128k flat.raw back.qcow2
same_content flat.raw back.qcow2
qemu_clean back.qcow2
expect_match "$(qemu-img info --output=json back.qcow2)" '"cluster-size": 131072'
passed
