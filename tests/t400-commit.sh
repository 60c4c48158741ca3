# imgtool commit against qemu-img commit on the same inputs: every chain
# is built once, copied to mine/ and theirs/ (backing names are relative,
# so the copies are chains of their own), committed by each tool, and then
# every file must read the same in both (qemu-img compare), qemu-img check
# must be clean, the emptied top must allocate nothing and still read as
# before, and BASE must have grown to the top's size.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/chain-lib.sh"
. "$tests/bitmap-lib.sh"

# emptied TOP: TOP allocates nothing of its own and still reads as before
# the commit.
emptied() {
    expect_eq "$(own_extents "$1")" "" "extents $1 still allocates"
    reads_as_before "$1"
}

# --- Two layers, 64k top clusters over a 4k base that is smaller than the
# top: data in both layers, partial writes in the top (copied on write from
# the base), zero clusters over base data and over nothing.
new_case
ok qemu-img create -q -f qcow2 -o cluster_size=4k src/base.qcow2 4M
ok qemu-img create -q -f qcow2 -o cluster_size=64k -b base.qcow2 -F qcow2 src/top.qcow2 6M
qio -c 'write -P 0x11 0 1M' -c 'write -P 0x12 2M 512k' -c 'write -P 0x13 3M 4k' src/base.qcow2
qio -c 'write -P 0x21 4k 4k' -c 'write -z 64k 64k' -c 'write -z 1M 128k' \
    -c 'write -P 0x22 2M 1000' -c 'write -P 0x23 4M 1M' -c 'write -P 0 5M 64k' \
    -c 'write -z 3M 64k' src/top.qcow2
run_both commit top.qcow2
expect_eq "$(cat mine.out)" "Image committed."
same_files base.qcow2 top.qcow2
emptied mine/top.qcow2
expect_eq "$(qemu-img info --output=json mine/base.qcow2 | grep '"virtual-size"')" \
          '    "virtual-size": 6291456,' "grown base"

# --- 4k top clusters over a 64k base, a base larger than the top, and -q.
new_case
ok qemu-img create -q -f qcow2 -o cluster_size=64k src/base.qcow2 8M
ok qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 src/top.qcow2 6M
qio -c 'write -P 0x31 0 8M' src/base.qcow2
qio -c 'write -P 0x41 4k 4k' -c 'write -z 68k 8k' -c 'write -P 0x42 1M 12k' \
    -c 'write -z 2M 1M' -c 'write -P 0x43 6140k 4k' src/top.qcow2
run_both commit -q top.qcow2
expect_eq "$(cat mine.out)" ""
same_files base.qcow2 top.qcow2
emptied mine/top.qcow2
expect_eq "$(qemu-img info --output=json mine/base.qcow2 | grep '"virtual-size"')" \
          '    "virtual-size": 8388608,' "base keeps its size"

# --- Three layers with three cluster sizes: the default BASE is the
# backing file (mid), -b names a deeper one and implies -d.
build_three() {
    new_case
    ok qemu-img create -q -f qcow2 -o cluster_size=16k src/base.qcow2 4M
    ok qemu-img create -q -f qcow2 -o cluster_size=64k -b base.qcow2 -F qcow2 src/mid.qcow2 4M
    ok qemu-img create -q -f qcow2 -o cluster_size=4k -b mid.qcow2 -F qcow2 src/top.qcow2 4M
    qio -c 'write -P 0x51 0 2M' -c 'write -P 0x52 3M 1M' src/base.qcow2
    qio -c 'write -P 0x61 256k 256k' -c 'write -z 1M 64k' -c 'write -P 0x62 3M 8k' src/mid.qcow2
    qio -c 'write -P 0x71 300k 4k' -c 'write -z 3M 4k' -c 'write -P 0x72 2M 4k' \
        -c 'write -z 0 8k' src/top.qcow2
}
build_three
run_both commit top.qcow2
same_files base.qcow2 mid.qcow2 top.qcow2
emptied mine/top.qcow2
ok cmp src/base.qcow2 mine/base.qcow2

build_three
ok qemu-img convert -O raw src/mid.qcow2 mid-before.raw
run_both commit -b base.qcow2 top.qcow2
same_files base.qcow2 mid.qcow2 top.qcow2
# -b implies -d: the top keeps its data and its backing file, so it reads
# as before; the base now reads as the top did.
reads_as_before mine/top.qcow2
same_content -f qcow2 -F raw mine/base.qcow2 view-before.raw
expect_eq "$(own_extents mine/top.qcow2)" "$(own_extents src/top.qcow2)" "top extents after -b"
expect_match "$(qemu-img info mine/top.qcow2)" '^backing file: mid.qcow2 \(actual path: mine/mid.qcow2\)$'

# -d: BASE is written, the top is left alone.
build_three
run_both commit -d top.qcow2
same_files base.qcow2 mid.qcow2 top.qcow2
ok cmp src/top.qcow2 mine/top.qcow2

# --- A short layer in the middle: the top reads zeroes past its end, and
# as in QEMU, committing past it writes those zeroes into BASE.
new_case
ok qemu-img create -q -f qcow2 src/base.qcow2 2M
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src/mid.qcow2 1M
ok qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 src/top.qcow2 2M
qio -c 'write -P 0x81 0 2M' src/base.qcow2
qio -c 'write -P 0x82 64k 64k' src/top.qcow2
run_both commit -b base.qcow2 top.qcow2
same_files base.qcow2 top.qcow2
same_content -f qcow2 -F raw mine/base.qcow2 view-before.raw

# --- A raw base, a compat=0.10 top and an extended-L2 top.
new_case
ok qemu-img create -q -f raw src/base.raw 2M
ok qemu-img create -q -f qcow2 -o compat=0.10 -b base.raw -F raw src/top.qcow2 2M
ok qemu-io -f raw -c 'write -P 0x91 0 2M' src/base.raw
qio -c 'write -P 0x92 8k 4k' -c 'write -z 1M 64k' src/top.qcow2
run_both commit top.qcow2
same_files base.raw top.qcow2
emptied mine/top.qcow2

new_case
ok qemu-img create -q -f qcow2 -o cluster_size=4k src/base.qcow2 4M
ok qemu-img create -q -f qcow2 -o cluster_size=64k,extended_l2=on -b base.qcow2 -F qcow2 \
    src/top.qcow2 4M
qio -c 'write -P 0xa1 0 4M' src/base.qcow2
qio -c 'write -P 0xa2 2k 2k' -c 'write -z 70k 4k' -c 'write -P 0xa3 1M 200k' src/top.qcow2
run_both commit top.qcow2
same_files base.qcow2 top.qcow2
emptied mine/top.qcow2

# --- --output=json (and a rate limit): what was read, written and zeroed.  64k clusters in
# both; data (64k), zeroes over base data (64k, written), zeroes over
# nothing (64k, skipped), the rest not allocated in the top (skipped).
new_case
ok qemu-img create -q -f qcow2 src/base.qcow2 1M
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src/top.qcow2 1M
qio -c 'write -P 0xb1 256k 64k' src/base.qcow2
qio -c 'write -P 0xb2 0 64k' -c 'write -z 128k 64k' -c 'write -z 256k 64k' src/top.qcow2
cp -r src mine
ok imgtool commit -r 64M --output=json mine/top.qcow2
expect_eq "$(out)" '{
    "image": "mine/top.qcow2",
    "base": "mine/base.qcow2",
    "emptied": true,
    "bytes-read": 65536,
    "bytes-written": 65536,
    "bytes-zeroed": 65536,
    "bytes-skipped": 917504
}'
ok qemu-io -f qcow2 -c 'read -P 0xb2 0 64k' -c 'read -P 0 64k 960k' mine/base.qcow2
qemu_clean mine/base.qcow2

# --- Dirty bitmaps: BASE's enabled bitmap records exactly what changed in
# BASE (the data, and the zeroes over its data, not the zeroes it already
# read); --bitmaps merges the top's bitmaps in (same name: merged; others:
# created with the top's granularity and enabled state).  QEMU reads the
# stored bitmaps the same.
new_case
ok qemu-img create -q -f qcow2 src/base.qcow2 1M
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src/top.qcow2 1M
qio -c 'write -P 0xb1 256k 64k' src/base.qcow2
ok imgtool bitmap --add src/base.qcow2 b
ok imgtool bitmap --add src/top.qcow2 b
ok imgtool bitmap --add src/top.qcow2 t
ok imgtool bitmap --add --disabled -g 128k src/top.qcow2 d
ok imgtool bitmap --add --disabled src/top.qcow2 d2
ok imgtool bitmap --merge t src/top.qcow2 d2
qio -c 'write -P 0xb2 0 64k' -c 'write -z 128k 64k' -c 'write -z 256k 64k' -c 'write -P 3 768k 4k' \
    src/top.qcow2
ok imgtool bitmap --merge t src/top.qcow2 d
top_dirty="0 65536
131072 65536
262144 65536
786432 65536"
same_dirty src/top.qcow2 t "$top_dirty"
cp -r src mine
ok imgtool commit -q mine/top.qcow2
same_dirty mine/base.qcow2 b "0 65536
262144 65536
786432 65536"
expect_eq "$(qemu_bitmaps mine/base.qcow2)" '[{"flags":["auto"],"name":"b","granularity":65536}]'
qemu_clean mine/base.qcow2
rm -rf mine
cp -r src mine
ok imgtool commit -q --bitmaps mine/top.qcow2
same_dirty mine/base.qcow2 b "$top_dirty"
same_dirty mine/base.qcow2 t "$top_dirty"
same_dirty mine/base.qcow2 d "0 393216
786432 131072"
same_dirty mine/base.qcow2 d2 ""
expect_eq "$(qemu_bitmaps mine/base.qcow2)" '[{"flags":["auto"],"name":"b","granularity":65536},{"flags":["auto"],"name":"t","granularity":65536},{"flags":[],"name":"d","granularity":131072},{"flags":[],"name":"d2","granularity":65536}]'
qemu_clean mine/base.qcow2
# The top's bitmaps are left as they were.
same_dirty mine/top.qcow2 t "$top_dirty"
# Sizes differ: a base smaller than the top grows, and so do its bitmaps
# (what lands past its old end is recorded); a top smaller than the base
# has its bitmaps merged in over its own size.
new_case
ok qemu-img create -q -f qcow2 src/base.qcow2 1M
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src/top.qcow2 2M
ok imgtool bitmap --add src/base.qcow2 b
qio -c 'write -P 5 1536k 64k' src/top.qcow2
cp -r src mine
ok imgtool commit -q mine/top.qcow2
same_dirty mine/base.qcow2 b "1572864 65536"
expect_eq "$(info_fields mine/base.qcow2)" '    "virtual-size": 2097152,'
new_case
ok qemu-img create -q -f qcow2 src/base.qcow2 2M
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src/top.qcow2 1M
ok imgtool bitmap --add src/top.qcow2 t
qio -c 'write -P 6 512k 64k' src/top.qcow2
cp -r src mine
ok imgtool commit -q --bitmaps mine/top.qcow2
same_dirty mine/base.qcow2 t "524288 65536"
expect_eq "$(info_fields mine/base.qcow2)" '    "virtual-size": 2097152,'
# --bitmaps into a base that cannot store bitmaps: refused before writing.
new_case
ok qemu-img create -q -f raw src/base.raw 1M
ok qemu-img create -q -f qcow2 -b base.raw -F raw src/top.qcow2 1M
ok imgtool bitmap --add src/top.qcow2 t
qio -c 'write -P 4 0 64k' src/top.qcow2
expect_status 1 imgtool commit --bitmaps src/top.qcow2
expect_eq "$(err)" "imgtool: src/base.raw: format 'raw' cannot store bitmaps (commit without --bitmaps)"
expect_eq "$(own_extents src/top.qcow2)" "0 65536" "top after a refused commit"
same_dirty src/top.qcow2 t "0 65536"
ok qemu-io -f raw -c 'read -P 0 0 1M' src/base.raw

# --- Interrupted (SIGINT while the rate limit holds the copy back): exit
# 130, the top untouched and reading as before, every file clean.
new_case
ok qemu-img create -q -f qcow2 src/base.qcow2 64M
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src/top.qcow2 64M
qio -c 'write -P 7 0 64M' src/top.qcow2
cp -r src mine
ok qemu-img convert -O raw src/top.qcow2 view-before.raw
"$IMGTOOL" commit -r 1M mine/top.qcow2 >commit.out 2>commit.err &
pid=$!
# Wait until the copy runs: its worker threads exist (up to 60 s on a loaded machine).
for _ in $(seq 1200); do
    [ "$(ls "/proc/$pid/task" 2>/dev/null | wc -l)" -gt 1 ] && break
    sleep 0.05
done
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
expect_eq "$rc" 130 "exit status after SIGINT"
expect_eq "$(cat commit.err)" "imgtool: mine/top.qcow2: commit cancelled; mine/base.qcow2 holds part of the data, mine/top.qcow2 is unchanged"
expect_eq "$(own_extents mine/top.qcow2)" "0 67108864" "top after an interrupted commit"
reads_as_before mine/top.qcow2
qemu_clean mine/top.qcow2
qemu_clean mine/base.qcow2

# --- Errors: one line naming the file, exit 1, nothing changed.
new_case
ok qemu-img create -q -f qcow2 src/alone.qcow2 1M
ok qemu-img create -q -f qcow2 src/other.qcow2 1M
ok qemu-img create -q -f qcow2 -b alone.qcow2 -F qcow2 src/top.qcow2 1M
expect_status 1 imgtool commit src/alone.qcow2
expect_eq "$(err)" "imgtool: src/alone.qcow2: image does not have a backing file"
expect_status 1 imgtool commit -b src/other.qcow2 src/top.qcow2
expect_eq "$(err)" "imgtool: src/other.qcow2: not found in the backing chain of src/top.qcow2"
expect_status 1 imgtool commit -b src/top.qcow2 src/top.qcow2
expect_eq "$(err)" "imgtool: src/top.qcow2: not found in the backing chain of src/top.qcow2"
expect_status 1 imgtool commit -r 1Q src/top.qcow2
expect_match "$(err)" "^imgtool commit: rate '1Q' is not a valid size"
expect_status 1 imgtool commit src/top.qcow2 extra
expect_match "$(err)" "unexpected argument 'extra'"
# A base another process reads cannot be written: refused when BASE is
# reopened writable, before anything is copied.
qemu-io -r -f qcow2 -c 'sleep 20000' src/alone.qcow2 >/dev/null 2>&1 &
holder=$!
# Wait (up to 60 s) until it holds QEMU's "write not shared" lock (byte
# 201, /proc/locks: "N: OFDLCK ADVISORY READ -1 MAJ:MIN:INODE START END").
# Probing with a second qemu-io instead could make both fail to start.
ino=$(stat -c %i src/alone.qcow2)
for _ in $(seq 600); do
    awk -v ino="$ino" '$2 == "OFDLCK" { split($6, d, ":"); if (d[3] == ino && $7 <= 201 && 201 <= $8) f = 1 }
        END { exit !f }' /proc/locks && break
    kill -0 "$holder" 2>/dev/null || die "qemu-io holding src/alone.qcow2 exited early"
    sleep 0.1
done
cp src/top.qcow2 top-before.qcow2
expect_status 1 imgtool commit src/top.qcow2
expect_eq "$(err)" 'imgtool: src/alone.qcow2: failed to get "write" lock: the image is in use by another process (stop it first)'
ok cmp src/top.qcow2 top-before.qcow2
kill "$holder"; wait "$holder" 2>/dev/null
passed
