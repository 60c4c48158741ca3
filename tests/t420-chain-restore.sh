# A backup chain as a restore checklist: info --backing-chain lists every
# image as qemu-img does, check --backing-chain checks every one and exits
# with the worst status, convert of any member gives a standalone image
# that reads as that member did, and shortening the chain (commit, then
# rebase -u) keeps every remaining member reading as before.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/chain-lib.sh"

# The chain full <- inc1 <- inc2, each with data of its own (and zeroes
# over older data), cluster sizes 64k, 16k, 4k; a raw snapshot of what
# each member reads.
ok qemu-img create -q -f qcow2 full.qcow2 32M
ok qemu-img create -q -f qcow2 -o cluster_size=16k -b full.qcow2 -F qcow2 inc1.qcow2
ok qemu-img create -q -f qcow2 -o cluster_size=4k -b inc1.qcow2 -F qcow2 inc2.qcow2
qio -c 'write -P 1 0 8M' -c 'write -P 2 16M 4M' full.qcow2
qio -c 'write -P 3 1M 64k' -c 'write -z 17M 1M' -c 'write -P 4 30M 16k' inc1.qcow2
ok imgtool io -q -c 'write -P 5 1028k 4k' -c 'write -z 0 4k' -c 'write -P 6 24M 8k' inc2.qcow2
for f in full inc1 inc2; do
    ok qemu-img convert -O raw $f.qcow2 $f.view.raw
done

# info --backing-chain: the same list as qemu-img's.
# chain_fields: from info --backing-chain JSON on stdin, one line per image.
chain_fields() {
    python3 -c 'import json, sys
for i in json.load(sys.stdin):
    print(*(i.get(k) for k in ("filename", "format", "virtual-size", "cluster-size",
                               "backing-filename", "backing-filename-format")))'
}
ok imgtool info --backing-chain --output=json inc2.qcow2
expect_eq "$(out | chain_fields)" \
          "$(qemu-img info --backing-chain --output=json inc2.qcow2 | chain_fields)" \
          "info --backing-chain"
expect_eq "$(out | chain_fields)" "inc2.qcow2 qcow2 33554432 4096 inc1.qcow2 qcow2
inc1.qcow2 qcow2 33554432 16384 full.qcow2 qcow2
full.qcow2 qcow2 33554432 65536 None None"
ok imgtool info --backing-chain inc2.qcow2
expect_eq "$(out | grep '^image:')" "image: inc2.qcow2
image: inc1.qcow2
image: full.qcow2"

# check --backing-chain: every member, clean.
ok imgtool check --backing-chain inc2.qcow2
expect_eq "$(out | grep -E '^(image:|No errors)')" "image: inc2.qcow2
No errors were found on the image.
image: inc1.qcow2
No errors were found on the image.
image: full.qcow2
No errors were found on the image."
ok imgtool check --backing-chain --output=json inc2.qcow2
expect_eq "$(out | grep -E '"(filename|check-errors)"')" '        "check-errors": 0,
        "filename": "inc2.qcow2",
        "check-errors": 0,
        "filename": "inc1.qcow2",
        "check-errors": 0,
        "filename": "full.qcow2",'
ok imgtool check -q --backing-chain inc2.qcow2
expect_eq "$(out)" ""

# A leaked cluster in the middle (cluster 0 counted twice) makes the chain
# exit 3, corruption in the base (an L2 entry pointing past the end of the
# file) makes it 2, the worst of all; each problem is named.
python3 - inc1.qcow2 <<'PY' || die "cannot add a leak to inc1.qcow2"
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    h = f.read(104)
    reftable = struct.unpack('>Q', h[48:56])[0]
    f.seek(reftable)
    block = struct.unpack('>Q', f.read(8))[0]
    f.seek(block)
    count = struct.unpack('>H', f.read(2))[0]
    f.seek(block)
    f.write(struct.pack('>H', count + 1))
PY
expect_status 3 imgtool check --backing-chain inc2.qcow2
expect_match "$(out)" $'image: inc1.qcow2\n\n1 leaked clusters were found on the image.'
expect_status 3 qemu-img check inc1.qcow2
cp full.qcow2 full.good
python3 - full.qcow2 <<'PY' || die "cannot damage full.qcow2"
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    h = f.read(104)
    f.seek(struct.unpack('>Q', h[40:48])[0])
    l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
    f.seek(l2 + 8 * 160)        # guest cluster 160 (10M), not allocated
    f.write(struct.pack('>Q', (1 << 63) | (1 << 40)))
PY
expect_status 2 imgtool check --backing-chain inc2.qcow2
expect_status 2 qemu-img check full.qcow2
ok imgtool check inc2.qcow2
mv full.good full.qcow2
ok qemu-img check -q -r leaks inc1.qcow2
ok imgtool check --backing-chain inc2.qcow2
# A chain that cannot be opened whole fails (1), naming the missing file.
mv inc1.qcow2 inc1.away
expect_status 1 imgtool check --backing-chain inc2.qcow2
expect_eq "$(err)" "imgtool: inc2.qcow2: cannot open backing file: inc1.qcow2: cannot open: No such file or directory"
mv inc1.away inc1.qcow2
# A raw member has nothing to check: 63 if everything else is clean.
ok qemu-img create -q -f raw base.raw 1M
ok qemu-img create -q -f qcow2 -b base.raw -F raw over.qcow2
expect_status 63 imgtool check --backing-chain over.qcow2
expect_eq "$(err)" "imgtool: base.raw: format 'raw' does not support checks"
expect_status 1 imgtool check --backing-chain -r leaks inc2.qcow2
expect_match "$(err)" "^imgtool check: -r cannot be used with --backing-chain"

# convert of any member: a standalone image (no backing file) that reads
# as the member did, also after the chain is gone.
for f in inc2 inc1 full; do
    ok imgtool convert -O qcow2 $f.qcow2 restore-$f.qcow2
    ok imgtool convert $f.qcow2 restore-$f.raw
    expect_eq "$(info_fields restore-$f.qcow2)" '    "virtual-size": 33554432,' "restore of $f"
    qemu_clean restore-$f.qcow2
done
mkdir gone
mv full.qcow2 inc1.qcow2 inc2.qcow2 gone/
for f in inc2 inc1 full; do
    same_content -f qcow2 -F raw restore-$f.qcow2 $f.view.raw
    ok cmp restore-$f.raw $f.view.raw
done
mv gone/* .

# Keeping the chain short: inc1 merged into full (commit), inc2 moved onto
# full (rebase -u, safe since inc1 now reads as full does).  Every member
# left reads as before and the chain is clean.
ok imgtool commit -q inc1.qcow2
ok imgtool rebase -u -b full.qcow2 -F qcow2 inc2.qcow2
ok imgtool info --backing-chain inc2.qcow2
expect_eq "$(out | grep '^image:')" "image: inc2.qcow2
image: full.qcow2"
ok imgtool check --backing-chain inc2.qcow2
same_content -f qcow2 -F raw inc2.qcow2 inc2.view.raw
same_content -f qcow2 -F raw full.qcow2 inc1.view.raw
passed
