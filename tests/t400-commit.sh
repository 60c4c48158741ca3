# imgtool commit against qemu-img commit on the same inputs: every chain
# is built once, copied to mine/ and theirs/ (backing names are relative,
# so the copies are chains of their own), committed by each tool, and then
# every file must read the same in both (qemu-img compare), qemu-img check
# must be clean, the emptied top must allocate nothing and still read as
# before, and BASE must have grown to the top's size.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

qio() { qemu-io -f qcow2 "$@" >/dev/null || die "qemu-io $*"; }

# new_case: fresh src/ directory for the next chain.
new_case() { rm -rf src mine theirs; mkdir src; }

# run_both ARGS...: "imgtool commit ARGS" in mine/, "qemu-img commit ARGS"
# in theirs/, both from copies of src/; the top's view is saved first.
run_both() {
    cp -r src mine
    cp -r src theirs
    ok qemu-img convert -O raw src/top.qcow2 view-before.raw
    (cd mine && "$IMGTOOL" commit "$@") >mine.out 2>&1 || die "imgtool commit $*: $(cat mine.out)"
    (cd theirs && qemu-img commit "$@") >theirs.out 2>&1 || die "qemu-img commit $*: $(cat theirs.out)"
    expect_eq "$(cat mine.out)" "$(cat theirs.out)" "output of commit $*"
}

# same_files F...: each file reads the same in mine/ and theirs/, and is
# clean; qcow2 files are checked.
same_files() {
    for f in "$@"; do
        same_content "mine/$f" "theirs/$f"
        case $f in *.qcow2) qemu_clean "mine/$f" ;; esac
        expect_eq "$(qemu-img info --output=json -U "mine/$f" | grep '"virtual-size"')" \
                  "$(qemu-img info --output=json -U "theirs/$f" | grep '"virtual-size"')" "size of $f"
    done
}

# emptied TOP: TOP allocates nothing of its own (everything at depth >= 1)
# and still reads as before the commit.
emptied() {
    checks=$((checks + 1))
    qemu-img map --output=json -U "$1" | grep -q '"depth": 0, "present": true' &&
        die "$1 still allocates data: $(qemu-img map --output=json -U "$1")"
    same_content -F raw "$1" view-before.raw
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
run_both top.qcow2
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
run_both -q top.qcow2
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
run_both top.qcow2
same_files base.qcow2 mid.qcow2 top.qcow2
emptied mine/top.qcow2
ok cmp src/base.qcow2 mine/base.qcow2

build_three
ok qemu-img convert -O raw src/mid.qcow2 mid-before.raw
run_both -b base.qcow2 top.qcow2
same_files base.qcow2 mid.qcow2 top.qcow2
# -b implies -d: the top keeps its data and its backing file, so it reads
# as before; the base now reads as the top did.
same_content -F raw mine/top.qcow2 view-before.raw
same_content -f qcow2 -F raw mine/base.qcow2 view-before.raw
expect_eq "$(qemu-img map --output=json mine/top.qcow2 | grep -c '"depth": 0, "present": true')" \
          "$(qemu-img map --output=json src/top.qcow2 | grep -c '"depth": 0, "present": true')" \
          "top extents after -b"
expect_match "$(qemu-img info mine/top.qcow2)" '^backing file: mid.qcow2 \(actual path: mine/mid.qcow2\)$'

# -d: BASE is written, the top is left alone.
build_three
run_both -d top.qcow2
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
run_both -b base.qcow2 top.qcow2
same_files base.qcow2 top.qcow2
same_content -f qcow2 -F raw mine/base.qcow2 view-before.raw

# --- A raw base, a compat=0.10 top and an extended-L2 top.
new_case
ok qemu-img create -q -f raw src/base.raw 2M
ok qemu-img create -q -f qcow2 -o compat=0.10 -b base.raw -F raw src/top.qcow2 2M
ok qemu-io -f raw -c 'write -P 0x91 0 2M' src/base.raw
qio -c 'write -P 0x92 8k 4k' -c 'write -z 1M 64k' src/top.qcow2
run_both top.qcow2
same_files base.raw top.qcow2
emptied mine/top.qcow2

new_case
ok qemu-img create -q -f qcow2 -o cluster_size=4k src/base.qcow2 4M
ok qemu-img create -q -f qcow2 -o cluster_size=64k,extended_l2=on -b base.qcow2 -F qcow2 \
    src/top.qcow2 4M
qio -c 'write -P 0xa1 0 4M' src/base.qcow2
qio -c 'write -P 0xa2 2k 2k' -c 'write -z 70k 4k' -c 'write -P 0xa3 1M 200k' src/top.qcow2
run_both top.qcow2
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
for _ in $(seq 100); do
    qemu-io -f qcow2 -c 'read 0 512' src/alone.qcow2 >/dev/null 2>&1 || break
    sleep 0.1
done
cp src/top.qcow2 top-before.qcow2
expect_status 1 imgtool commit src/top.qcow2
expect_eq "$(err)" 'imgtool: src/alone.qcow2: failed to get "write" lock: the image is in use by another process (stop it first)'
ok cmp src/top.qcow2 top-before.qcow2
kill "$holder"; wait "$holder" 2>/dev/null
passed
