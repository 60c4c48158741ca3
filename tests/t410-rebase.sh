# imgtool rebase against qemu-img rebase on the same inputs (see
# chain-lib.sh): the rebased image must read as before and as qemu-img's
# result, allocate exactly the same ranges (what differs between the old
# and the new chain, in whole clusters of the image), name the same backing
# file, and be clean; its enabled bitmaps record exactly those ranges, as
# QEMU's do.  --output=json shows what was read: only the allocated ranges
# of the chains, never the image's own clusters.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/chain-lib.sh"
. "$tests/bitmap-lib.sh"

# rebased ARGS...: run both tools (the image is top.qcow2), then the checks
# above.
rebased() {
    rebased_keeping_extents "$@"
    expect_eq "$(own_extents mine/top.qcow2)" "$(own_extents theirs/top.qcow2)" \
              "extents after rebase $*"
}
rebased_keeping_extents() {
    run_both rebase "$@" top.qcow2
    same_files top.qcow2
    reads_as_before mine/top.qcow2
}

# json_field NAME: the number NAME in the last output (--output=json).
json_field() { out | sed -n "s/^ *\"$1\": \\([0-9]*\\),\\{0,1\\}\$/\\1/p"; }

# --- Two layers each side: a 64k-cluster image over 4k clusters, rebased
# onto 16k clusters.  Data and zeroes in every layer; a difference of one
# 4k cluster inside a 64k cluster of the image makes it copy that cluster
# whole from the old chain.  The image's bitmap records the new clusters.
new_case
ok qemu-img create -q -f qcow2 -o cluster_size=4k src/old.qcow2 4M
ok qemu-img create -q -f qcow2 -o cluster_size=16k src/new.qcow2 4M
ok qemu-img create -q -f qcow2 -o cluster_size=64k -b old.qcow2 -F qcow2 src/top.qcow2 4M
qio -c 'write -P 1 0 1M' -c 'write -P 2 2M 4k' -c 'write -z 3M 64k' -c 'write -P 0 3584k 64k' \
    src/old.qcow2
qio -c 'write -P 1 0 512k' -c 'write -P 1 520k 4k' -c 'write -P 9 3M 128k' \
    -c 'write -P 7 3584k 512' -c 'write -P 6 3712k 64k' src/new.qcow2
qio -c 'write -P 5 64k 64k' -c 'write -z 2M 64k' src/top.qcow2
ok imgtool bitmap --add src/top.qcow2 b
rebased -b new.qcow2 -F qcow2
# Differing: 512k-1M (one 4k cluster the same), 3M-3M+128k (zeroes over
# data), 3584k (one sector) and 3712k; 0-512k is the same in both.
expect_eq "$(own_extents mine/top.qcow2)" "65536 65536
524288 524288
2097152 65536
3145728 131072
3670016 65536
3801088 65536"
same_dirty mine/top.qcow2 b "524288 524288
3145728 131072
3670016 65536
3801088 65536"
same_dirty theirs/top.qcow2 b "$(imgtool_dirty mine/top.qcow2 b)"

# --- 4k clusters over 64k ones, with the new backing shorter and the old
# one longer than the image.
new_case
ok qemu-img create -q -f qcow2 -o cluster_size=64k src/old.qcow2 8M
ok qemu-img create -q -f qcow2 -o cluster_size=64k src/new.qcow2 2M
ok qemu-img create -q -f qcow2 -o cluster_size=4k -b old.qcow2 -F qcow2 src/top.qcow2 4M
qio -c 'write -P 1 0 8M' src/old.qcow2
qio -c 'write -P 1 0 2M' -c 'write -P 2 68k 4k' -c 'write -z 1M 64k' src/new.qcow2
qio -c 'write -P 3 0 4k' -c 'write -z 2M 8k' -c 'write -P 4 3M 12k' src/top.qcow2
rebased -b new.qcow2 -F qcow2
expect_eq "$(own_extents mine/top.qcow2)" "0 4096
69632 4096
1048576 65536
2097152 2097152"

# ... and the other way round: a short old backing file, a long new one.
new_case
ok qemu-img create -q -f qcow2 -o cluster_size=64k src/old.qcow2 1M
ok qemu-img create -q -f qcow2 -o cluster_size=4k src/new.qcow2 8M
ok qemu-img create -q -f qcow2 -o cluster_size=16k -b old.qcow2 -F qcow2 src/top.qcow2 4M
qio -c 'write -P 1 0 1M' src/old.qcow2
qio -c 'write -P 1 0 512k' -c 'write -P 2 1M 4k' -c 'write -P 3 3M 1M' -c 'write -P 4 5M 1M' \
    src/new.qcow2
rebased -b new.qcow2 -F qcow2
expect_eq "$(own_extents mine/top.qcow2)" "524288 540672
3145728 1048576"

# --- Three layers: rebasing onto the base of the old chain reads only what
# the layer in between allocates (the rest is the same in both chains), as
# the byte counts show.
build_three() {
    new_case
    ok qemu-img create -q -f qcow2 -o cluster_size=16k src/base.qcow2 64M
    ok qemu-img create -q -f qcow2 -o cluster_size=64k -b base.qcow2 -F qcow2 src/mid.qcow2 64M
    ok qemu-img create -q -f qcow2 -o cluster_size=4k -b mid.qcow2 -F qcow2 src/top.qcow2 64M
    qio -c 'write -P 1 0 32M' -c 'write -P 2 40M 8M' src/base.qcow2
    qio -c 'write -P 3 1M 256k' -c 'write -z 41M 64k' -c 'write -P 1 2M 64k' \
        -c 'write -P 4 60M 64k' src/mid.qcow2
    qio -c 'write -P 5 1M 4k' -c 'write -P 6 50M 4k' -c 'write -z 60M 4k' src/top.qcow2
}
build_three
rebased -b base.qcow2 -F qcow2
expect_eq "$(own_extents mine/top.qcow2)" "1048576 262144
42991616 65536
52428800 4096
62914560 65536"
cp -r src counted
ok imgtool rebase --output=json -b base.qcow2 -F qcow2 counted/top.qcow2
# Read from the old chain: mid's data minus what the image covers (256k -
# 4k, 64k, 64k - 4k); compared: that and mid's zero cluster (64k).
expect_eq "$(json_field bytes-read)" $((256 * 1024 - 4096 + 65536 + 65536 - 4096))
expect_eq "$(json_field bytes-compared)" $((256 * 1024 - 4096 + 65536 + 65536 - 4096 + 65536))
expect_eq "$(json_field bytes-written)" $((256 * 1024 - 4096 + 65536 - 4096))
expect_eq "$(json_field bytes-zeroed)" 65536
same_content counted/top.qcow2 mine/top.qcow2

# -b "": standalone, with everything the chain provided copied in.
build_three
rebased -b ""
expect_eq "$(info_fields mine/top.qcow2 | grep -c backing)" 0
ok imgtool rebase --output=json -b "" src/top.qcow2
# All the data of the chain (40M in base, mid's zeroes over 64k of it and
# 64k of data past it) but the image's own two data clusters within it.
expect_eq "$(json_field bytes-read)" $((40 * 1024 * 1024 - 65536 + 65536 - 4096 - 4096))
expect_eq "$(json_field bytes-zeroed)" 0
reads_as_before src/top.qcow2
ok qemu-img convert -O raw -f qcow2 src/top.qcow2 standalone.raw
ok cmp standalone.raw view-before.raw

# --- An extended-L2 image (subclusters of 2k) and a compat=0.10 one.  In
# the first, a difference inside a 64k cluster copies the cluster's
# unallocated part whole from the old chain, where qemu-img 7.2 copies only
# the differing subclusters.
new_case
ok qemu-img create -q -f qcow2 -o cluster_size=4k src/old.qcow2 4M
ok qemu-img create -q -f qcow2 -o cluster_size=4k src/new.qcow2 4M
ok qemu-img create -q -f qcow2 -o cluster_size=64k,extended_l2=on -b old.qcow2 -F qcow2 \
    src/top.qcow2 4M
qio -c 'write -P 1 0 4M' src/old.qcow2
qio -c 'write -P 1 0 4M' -c 'write -P 2 8k 4k' -c 'write -P 3 1M 100k' src/new.qcow2
qio -c 'write -P 4 6k 4k' -c 'write -z 1050k 2k' src/top.qcow2
rebased_keeping_extents -b new.qcow2 -F qcow2
expect_eq "$(own_extents theirs/top.qcow2)" "6144 6144
1048576 102400"
expect_eq "$(own_extents mine/top.qcow2)" "6144 59392
1048576 131072"

new_case
ok qemu-img create -q -f qcow2 src/old.qcow2 2M
ok qemu-img create -q -f raw src/new.raw 2M
ok qemu-img create -q -f qcow2 -o compat=0.10 -b old.qcow2 -F qcow2 src/top.qcow2 2M
qio -c 'write -P 1 0 1M' src/old.qcow2
ok qemu-io -f raw -c 'write -P 1 0 512k' -c 'write -P 2 1536k 64k' src/new.raw
qio -c 'write -P 3 64k 64k' src/top.qcow2
rebased -b new.raw -F raw
expect_eq "$(own_extents mine/top.qcow2)" "65536 65536
524288 524288
1572864 65536"

# --- -u: only the header changes (as qemu-img rebase -u, also onto a file
# that does not exist, when its format is given).
build_three
cp src/top.qcow2 top-before.qcow2
run_both rebase -u -b base.qcow2 -F qcow2 top.qcow2
expect_eq "$(info_fields mine/top.qcow2)" "$(info_fields theirs/top.qcow2)" "info after -u"
expect_eq "$(own_extents mine/top.qcow2)" "$(own_extents src/top.qcow2)" "extents after -u"
qemu_clean mine/top.qcow2
ok qemu-io -f qcow2 -c 'read -P 2 40M 4k' -c 'read -P 5 1M 4k' mine/top.qcow2
run_both rebase -u -b elsewhere/gone.qcow2 -F qcow2 top.qcow2
expect_eq "$(info_fields mine/top.qcow2)" "$(info_fields theirs/top.qcow2)" "info after -u"
run_both rebase -u -b "" top.qcow2
expect_eq "$(info_fields mine/top.qcow2)" "$(info_fields theirs/top.qcow2)" "info after -u"
# Without -F the format is probed, so the file must exist.
ok imgtool rebase -u -b base.qcow2 mine/top.qcow2
expect_eq "$(info_fields mine/top.qcow2)" '    "backing-filename-format": "qcow2",
    "virtual-size": 67108864,
    "backing-filename": "base.qcow2",'
expect_status 1 imgtool rebase -u -b gone.qcow2 mine/top.qcow2
expect_eq "$(err)" "imgtool: mine/top.qcow2: cannot open new backing file: mine/gone.qcow2: cannot open: No such file or directory"

# --- A mostly empty image over a large chain: only the allocated ranges
# of the chains are read (8 MiB of the old chain, 2 MiB more of the new
# one, none of the 4 GiB of holes), and only what differs is written.
new_case
ok qemu-img create -q -f qcow2 src/old.qcow2 4G
ok qemu-img create -q -f qcow2 src/new.qcow2 4G
ok qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 src/top.qcow2 4G
qio -c 'write -P 1 0 4M' -c 'write -P 2 1G 4M' src/old.qcow2
qio -c 'write -P 1 0 4M' -c 'write -P 3 1G 2M' -c 'write -P 4 3G 2M' src/new.qcow2
qio -c 'write -P 5 1G 64k' src/top.qcow2
ok imgtool rebase --output=json -b new.qcow2 -F qcow2 src/top.qcow2
expect_eq "$(json_field bytes-read)" $((8 * 1024 * 1024 - 65536))
expect_eq "$(json_field bytes-compared)" $((8 * 1024 * 1024 - 65536 + 2 * 1024 * 1024))
expect_eq "$(json_field bytes-written)" $((4 * 1024 * 1024 - 65536))
expect_eq "$(json_field bytes-zeroed)" $((2 * 1024 * 1024))
expect_eq "$(json_field bytes-skipped)" $((4 * 1024 * 1024 * 1024 - 65536 - 4 * 1024 * 1024 + 65536 - 2 * 1024 * 1024))
ok qemu-io -f qcow2 -c 'read -P 1 0 4M' -c 'read -P 5 1G 64k' -c 'read -P 2 1025M 3M' \
    -c 'read -P 0 3G 2M' src/top.qcow2
qemu_clean src/top.qcow2

# --- Errors: one line naming the file, exit 1, the image unchanged.
build_three
cp src/top.qcow2 top-before.qcow2
expect_status 1 imgtool rebase src/top.qcow2
expect_match "$(err)" '^imgtool rebase: give the new backing file with -b \(-b "" makes the image standalone\)$'
expect_status 1 imgtool rebase -b "" -F qcow2 src/top.qcow2
expect_match "$(err)" '^imgtool rebase: -F needs a backing file \(-b "" removes it\)$'
expect_status 1 imgtool rebase -b missing.qcow2 -F qcow2 src/top.qcow2
expect_eq "$(err)" "imgtool: src/top.qcow2: cannot open new backing file: src/missing.qcow2: cannot open: No such file or directory"
expect_status 1 imgtool rebase -b top.qcow2 -F qcow2 src/top.qcow2
expect_eq "$(err)" "imgtool: top.qcow2: an image cannot be its own backing file"
ok imgtool create -q -f raw src/plain.raw 1M
expect_status 1 imgtool rebase -b base.qcow2 src/plain.raw
expect_eq "$(err)" "imgtool: src/plain.raw: format 'raw' has no backing file"
# A backing file another process writes is read only with -U.
qemu-io -f qcow2 -c 'sleep 20000' src/mid.qcow2 >/dev/null 2>&1 &
holder=$!
for _ in $(seq 100); do
    qemu-img info src/mid.qcow2 >/dev/null 2>&1 || break
    sleep 0.1
done
expect_status 1 imgtool rebase -b base.qcow2 -F qcow2 src/top.qcow2
expect_match "$(err)" '^imgtool: src/top.qcow2: cannot open old backing file: src/mid.qcow2: failed to get shared "write" lock'
ok cmp src/top.qcow2 top-before.qcow2
cp -r src forced
ok imgtool rebase -U -b base.qcow2 -F qcow2 forced/top.qcow2
same_content forced/top.qcow2 src/top.qcow2
expect_match "$(qemu-img info forced/top.qcow2)" $'\nbacking file: base.qcow2 '
kill "$holder"; wait "$holder" 2>/dev/null
mv src/mid.qcow2 src/mid.moved
expect_status 1 imgtool rebase -b base.qcow2 -F qcow2 src/top.qcow2
expect_eq "$(err)" "imgtool: src/top.qcow2: cannot open old backing file: src/mid.qcow2: cannot open: No such file or directory"
ok cmp src/top.qcow2 top-before.qcow2
passed
