# Bitmaps written by imgtool: qemu-img info lists them with the right
# granularity and flags, qemu-img check finds no errors and no leaks, and
# QEMU sees the same dirty bits (qemu-nbd -B + nbdinfo, and qemu-img bitmap
# --merge into a fresh bitmap).  Every write imgtool makes dirties them
# (io, convert -n, resize keeps them valid); bitmap operations are one
# transaction; convert --bitmaps copies them; inconsistent bitmaps (left in
# use by a killed QEMU) can only be removed.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/bitmap-lib.sh"

size=$bitmap_disk_size
ok qemu-img create -q -f qcow2 b.qcow2 $size
for g in 512 4k 64k 1M 64M; do
    ok imgtool bitmap --add -g $g b.qcow2 g$g
done
ok imgtool bitmap --add --disabled b.qcow2 off
ok imgtool bitmap --add b.qcow2 dflt
expected='[{"flags":["auto"],"name":"g512","granularity":512},{"flags":["auto"],"name":"g4k","granularity":4096},{"flags":["auto"],"name":"g64k","granularity":65536},{"flags":["auto"],"name":"g1M","granularity":1048576},{"flags":["auto"],"name":"g64M","granularity":67108864},{"flags":[],"name":"off","granularity":65536},{"flags":["auto"],"name":"dflt","granularity":65536}]'
expect_eq "$(qemu_bitmaps b.qcow2)" "$expected" "qemu-img info bitmaps after --add"
qemu_clean b.qcow2
ok qemu-img check --output=json b.qcow2
expect_eq "$(out | grep -cE '"(leaks|corruptions)"')" 0 "qemu-img check counters"

# The writes of t200, made by imgtool: the same extents (64k: worked out by
# hand), and QEMU reads them.  The zero write covers [512M, 768M), one whole
# data cluster of g512: stored as an all-ones bitmap table entry.
ok imgtool io "${bitmap_writes[@]}" b.qcow2
expect_eq "$(qemu_bitmaps b.qcow2)" "$expected" "bitmaps after writes (in use cleared)"
qemu_clean b.qcow2
for g in 512 4k 1M 64M; do
    same_dirty b.qcow2 g$g
done
same_dirty b.qcow2 g64k "$bitmap_writes_64k"
same_dirty b.qcow2 dflt "$bitmap_writes_64k"
same_dirty b.qcow2 off ""

# QEMU loads imgtool's bitmap, merges it into a fresh one and stores it.
ok qemu-img bitmap --add -g 512 --merge g512 b.qcow2 fresh
expect_eq "$(qemu_dirty b.qcow2 fresh)" "$(imgtool_dirty b.qcow2 g512)" "QEMU's copy of g512"
# QEMU writes on (loading, dirtying and storing imgtool's bitmaps), then
# imgtool writes on, and both agree throughout.
ok qemu-io -f qcow2 -c 'write 900M 4k' b.qcow2
same_dirty b.qcow2 g4k
ok imgtool io -c 'write -P 1 950M 1k' b.qcow2
same_dirty b.qcow2 g4k
same_dirty b.qcow2 fresh
qemu_clean b.qcow2

# convert -n writes through the generic layer: it dirties them too.
ok qemu-img create -q -f raw src.raw $size
ok qemu-io -f raw -c 'write -P 9 600M 64k' src.raw
ok imgtool bitmap --clear b.qcow2 g64k
ok imgtool convert -n --target-is-zero -O qcow2 src.raw b.qcow2
same_dirty b.qcow2 g64k "629145600 65536"

# One call is one transaction: a failing operation leaves everything as it
# was; operations apply in order.
before=$(qemu_bitmaps b.qcow2)
expect_status 1 imgtool bitmap --add -g 4k --merge nope b.qcow2 newone
expect_eq "$(err)" "imgtool: b.qcow2: no bitmap 'nope'"
expect_status 1 imgtool bitmap --clear --remove --remove b.qcow2 g1M
expect_eq "$(err)" "imgtool: b.qcow2: no bitmap 'g1M'"
expect_status 1 imgtool bitmap --add b.qcow2 g4k
expect_eq "$(err)" "imgtool: b.qcow2: bitmap 'g4k' already exists"
expect_eq "$(qemu_bitmaps b.qcow2)" "$before" "bitmaps after failed transactions"
same_dirty b.qcow2 g1M
ok imgtool bitmap --remove --add -g 1M --disabled --merge g64k b.qcow2 g512
expect_match "$(qemu_bitmaps b.qcow2)" '\{"flags":\[\],"name":"g512","granularity":1048576\}\]$'
same_dirty b.qcow2 g512 "629145600 1048576"
# Disabled bitmaps record nothing; enabled again, they do.
ok imgtool bitmap --disable b.qcow2 g64k
ok imgtool io -c 'write 700M 1' b.qcow2
same_dirty b.qcow2 g64k "629145600 65536"
ok imgtool bitmap --enable b.qcow2 g64k
ok imgtool io -c 'write 700M 1' b.qcow2
same_dirty b.qcow2 g64k "629145600 65536
734003200 65536"
ok imgtool bitmap --clear b.qcow2 g64k
same_dirty b.qcow2 g64k ""
qemu_clean b.qcow2

# --merge from another image (-b), of a different granularity.
ok qemu-img create -q -f qcow2 other.qcow2 $size
ok qemu-img bitmap --add -g 1M other.qcow2 o
ok qemu-io -f qcow2 -c 'write 5M 1' other.qcow2
ok imgtool bitmap --merge o -b other.qcow2 -F qcow2 b.qcow2 g64k
same_dirty b.qcow2 g64k "5242880 1048576"
# -b naming the image itself (which qemu-img refuses: its own lock).
ok imgtool bitmap --add --merge g64k -b ./b.qcow2 b.qcow2 self
same_dirty b.qcow2 self "5242880 1048576"
ok imgtool bitmap --remove b.qcow2 self
ok qemu-img create -q -f qcow2 small.qcow2 1M
ok qemu-img bitmap --add small.qcow2 s
expect_status 1 imgtool bitmap --merge s -b small.qcow2 b.qcow2 g64k
expect_match "$(err)" "^imgtool: b.qcow2: merging bitmap 's' into 'g64k': "

# Resizing keeps the bitmaps valid for QEMU (bitmap tables follow the size).
ok imgtool resize b.qcow2 +1M
ok imgtool io -c "write $size 4k" b.qcow2
same_dirty b.qcow2 g64k "5242880 1048576
1073741824 65536"
same_dirty b.qcow2 g4k
qemu_clean b.qcow2

# convert --bitmaps copies them (names, granularity, flags, bits) to qcow2.
ok imgtool convert --bitmaps -O qcow2 b.qcow2 copy.qcow2
expect_eq "$(qemu_bitmaps copy.qcow2)" "$(qemu_bitmaps b.qcow2)" "bitmaps of the copy"
for b in g4k g64k g512 g64M off fresh; do
    same_dirty copy.qcow2 $b "$(imgtool_dirty b.qcow2 $b)"
done
qemu_clean copy.qcow2
expect_status 1 imgtool convert --bitmaps -O raw b.qcow2 copy.raw
expect_eq "$(err)" "imgtool: copy.raw: format 'raw' does not support persistent bitmaps"
[ ! -e copy.raw ] || die "convert --bitmaps to raw created copy.raw"

# Formats and versions that cannot store bitmaps.
ok qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
expect_status 1 imgtool bitmap --add v2.qcow2 x
expect_eq "$(err)" "imgtool: v2.qcow2: qcow2 version 2 (compat=0.10) images cannot store bitmaps"
ok qemu-img create -q -f raw r.raw 1M
expect_status 1 imgtool bitmap --add r.raw x
expect_eq "$(err)" "imgtool: r.raw: format 'raw' does not support persistent bitmaps"

# A QEMU killed while writing leaves its bitmaps in use: inconsistent.
ok qemu-img create -q -f qcow2 k.qcow2 64M
ok qemu-img bitmap --add k.qcow2 live
ok qemu-img bitmap --add k.qcow2 good
ok qemu-img bitmap --add k.qcow2 target
expect_status 137 qemu-io -f qcow2 -c 'write 0 64k' -c 'sigraise 9' k.qcow2
expect_eq "$(qemu_bitmaps k.qcow2)" '[{"flags":["in-use","auto"],"name":"live","granularity":65536},{"flags":["in-use","auto"],"name":"good","granularity":65536},{"flags":["in-use","auto"],"name":"target","granularity":65536}]'
ok imgtool bitmap --list k.qcow2
expect_eq "$(out)" "NAME              GRANULARITY  FLAGS             DIRTY BYTES
live                    65536  in-use,auto                 -
good                    65536  in-use,auto                 -
target                  65536  in-use,auto                 -"
ok imgtool info --output=json k.qcow2
expect_match "$(out | tr -d ' \n')" '"bitmaps":\[\{"flags":\["in-use","auto"\],"name":"live"'
expect_status 1 imgtool bitmap --dump k.qcow2 live
expect_eq "$(err)" "imgtool: k.qcow2: bitmap 'live' is inconsistent (it was not saved correctly) and cannot be used; remove it"
ok imgtool bitmap --remove k.qcow2 good
ok imgtool bitmap --add k.qcow2 good
expect_status 1 imgtool bitmap --merge live k.qcow2 good
expect_eq "$(err)" "imgtool: k.qcow2: bitmap 'live' is inconsistent (it was not saved correctly) and cannot be used; remove it"
expect_status 1 imgtool bitmap --clear k.qcow2 live
expect_eq "$(err)" "imgtool: k.qcow2: bitmap 'live' is inconsistent (it was not saved correctly) and cannot be used; remove it"
expect_status 1 imgtool convert --bitmaps -O qcow2 k.qcow2 k2.qcow2
expect_match "$(err)" "^imgtool: k.qcow2: bitmap 'live' is inconsistent and cannot be copied; skip it with --skip-broken-bitmaps"
ok imgtool convert --bitmaps --skip-broken-bitmaps -O qcow2 k.qcow2 k2.qcow2
expect_eq "$(qemu_bitmaps k2.qcow2)" '[{"flags":["auto"],"name":"good","granularity":65536}]'
# Writing an image with an inconsistent bitmap keeps it inconsistent (and
# in use) without touching it; QEMU agrees; removing it frees its clusters.
ok imgtool io -c 'write 1M 64k' k.qcow2
same_dirty k.qcow2 good "1048576 65536"
expect_eq "$(qemu_bitmaps k.qcow2)" '[{"flags":["in-use","auto"],"name":"live","granularity":65536},{"flags":["in-use","auto"],"name":"target","granularity":65536},{"flags":["auto"],"name":"good","granularity":65536}]'
ok imgtool bitmap --remove k.qcow2 live
ok imgtool bitmap --remove k.qcow2 target
expect_eq "$(qemu_bitmaps k.qcow2)" '[{"flags":["auto"],"name":"good","granularity":65536}]'
qemu_clean k.qcow2
passed
