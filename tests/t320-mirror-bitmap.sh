# imgtool mirror --sync=bitmap|incremental: the diff-image use case with
# bitmap granularities below, equal to and above the target cluster size,
# and the bitmap modes always / on-success / never against jobs that
# succeed and jobs whose target fills up, including resuming an "always"
# job so that it copies only what is left.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3
"$IMGTOOL" help bitmap >/dev/null 2>&1 || skip "needs the bitmap command"

dump() { imgtool bitmap --dump --output=json "$1" "$2" | tr -d ' \n'; }

# Writes that cover bitmap granules partly and target clusters partly.
dirty_writes() {
    ok imgtool io -q -c 'write -P 0x41 4k 8k' -c 'write -P 0x42 1M 100k' \
        -c 'write -z 17M 64k' -c 'write -P 0x43 40M 4k' -c 'write -P 0x44 63M 1M' "$1"
}

# --- The diff-image use case: full copy, writes, bitmap mirror into a new
# qcow2 without backing, rebase -u onto the full copy: identical. ---
# Bytes the diff image allocates itself: the dirty extents widened to its
# 64 KiB clusters (and to the granules when those are larger).
declare -A widened=([4k]=1376256 [64k]=1376256 [256k]=2097152)
for gran in 4k 64k 256k; do
    rm -f src.qcow2 full.qcow2 diff.qcow2
    ok imgtool create -q -f qcow2 src.qcow2 64M
    ok imgtool io -q -c 'write -P 1 0 8M' -c 'write -P 2 16M 4M' -c 'write -P 3 40M 1M' src.qcow2
    ok imgtool mirror -q src.qcow2 full.qcow2
    ok imgtool bitmap --add -g $gran src.qcow2 b0
    dirty_writes src.qcow2
    before=$(dump src.qcow2 b0)
    ok imgtool mirror -q --sync=incremental --bitmap=b0 -o cluster_size=64k src.qcow2 diff.qcow2
    qemu_clean diff.qcow2
    qemu_clean src.qcow2
    expect_eq "$(qemu-img info --output=json diff.qcow2 | grep -c backing-filename)" 0 "backing of the diff image"
    ok qemu-img rebase -u -b full.qcow2 -F qcow2 diff.qcow2
    same_content src.qcow2 diff.qcow2
    expect_eq "$(dump src.qcow2 b0)" "[]" "bitmap after a successful incremental mirror (g=$gran)"
    # Only the dirty clusters are in the diff image.
    alloc=$(qemu-img map --output=json diff.qcow2 | python3 -c '
import json, sys
print(sum(m["length"] for m in json.load(sys.stdin) if m["depth"] == 0 and m["present"]))')
    expect_eq "$alloc" "${widened[$gran]}" "bytes allocated in the diff image (g=$gran)"
done

# --- Bitmap modes x success, granularity below, equal to and above the
# target's 64 KiB clusters ---
for gran in 16k 64k 256k; do
for mode in always on-success never; do
    rm -f src.qcow2 tgt.qcow2
    ok imgtool create -q -f qcow2 src.qcow2 64M
    ok imgtool io -q -c 'write -P 1 0 8M' src.qcow2
    ok imgtool mirror -q src.qcow2 tgt.qcow2
    ok imgtool bitmap --add -g $gran src.qcow2 b0
    dirty_writes src.qcow2
    before=$(dump src.qcow2 b0)
    ok imgtool mirror -q --sync=bitmap --bitmap=b0 --bitmap-mode=$mode src.qcow2 tgt.qcow2
    same_content src.qcow2 tgt.qcow2
    qemu_clean src.qcow2
    if [ $mode = never ]; then want=$before; else want="[]"; fi
    expect_eq "$(dump src.qcow2 b0)" "$want" "bitmap after success, mode $mode, g=$gran"
done
done

# --- Bitmap modes x failure: the existing target lives on a small tmpfs
# that fills up part way through the job. ---
mkdir mnt
mount -t tmpfs -o size=16M tmpfs mnt 2>/dev/null || skip "cannot mount a tmpfs (needs root)"
trap 'umount "$T/mnt" 2>/dev/null; rm -rf "$T"' EXIT
for gran in 16k 64k 256k; do
for mode in always on-success never; do
    rm -f src.qcow2 mnt/*
    ok imgtool create -q -f qcow2 src.qcow2 64M
    ok imgtool mirror -q src.qcow2 mnt/tgt.qcow2
    ok imgtool bitmap --add -g $gran src.qcow2 b0
    # 8 MiB of dirty data in four 2 MiB runs; leave 5 MiB free on the
    # target's file system, and copy one request at a time, so that two
    # runs reach the target and the third fails.
    ok imgtool io -q -c 'write -P 7 0 2M' -c 'write -P 8 10M 2M' -c 'write -P 9 30M 2M' \
        -c 'write -P 10 50M 2M' src.qcow2
    before=$(dump src.qcow2 b0)
    avail=$(( $(stat -f -c '%a*%S' mnt) ))
    fallocate -l $((avail - 5 * 1024 * 1024)) mnt/filler
    expect_status 1 imgtool mirror --max-in-flight=1 --sync=bitmap --bitmap=b0 --bitmap-mode=$mode src.qcow2 mnt/tgt.qcow2
    expect_match "$(err)" 'No space left on device'
    qemu_clean src.qcow2
    after=$(dump src.qcow2 b0)
    case $mode in
    on-success|never)
        expect_eq "$after" "$before" "bitmap after a failed job, mode $mode, g=$gran" ;;
    always)
        # Some ranges reached the target and are no longer dirty; the rest are.
        [ "$after" != "$before" ] && [ "$after" != "[]" ] || die "always mode after failure: $after"
        left=$(imgtool bitmap --list --output=json src.qcow2 | python3 -c 'import json,sys; print([b for b in json.load(sys.stdin) if b["name"]=="b0"][0]["dirty-bytes"])')
        # Resume: with space again, the same command copies only what is left.
        rm mnt/filler
        ok imgtool mirror --output=json --sync=bitmap --bitmap=b0 --bitmap-mode=always src.qcow2 mnt/tgt.qcow2
        read_bytes=$(out | tail -n 1 | sed -E 's/.*"bytes-read": ([0-9]+).*/\1/')
        expect_eq "$read_bytes" "$left" "bytes read when resuming (what was left dirty)"
        [ "$left" -lt $((8 << 20)) ] || die "resume copied everything again"
        expect_eq "$(dump src.qcow2 b0)" "[]" "bitmap after resuming"
        same_content src.qcow2 mnt/tgt.qcow2 ;;
    esac
done
done

# An inconsistent bitmap is refused.
rm -f mnt/* src.qcow2
ok imgtool create -q -f qcow2 src.qcow2 16M
ok imgtool bitmap --add src.qcow2 b1
ok python3 - src.qcow2 <<'PY'
# Set the in_use flag of the first bitmap directory entry, as a crash would.
import struct, sys
f = open(sys.argv[1], 'r+b')
h = f.read(4096)
off = struct.unpack('>I', h[100:104])[0]   # header_length
while True:
    t, l = struct.unpack('>II', h[off:off + 8])
    if t == 0x23852875:
        d = h[off + 8:off + 8 + l]
        dir_off = struct.unpack('>Q', d[16:24])[0]
        break
    off += 8 + (l + 7) // 8 * 8
f.seek(dir_off + 12)
flags = struct.unpack('>I', f.read(4))[0]
f.seek(dir_off + 12)
f.write(struct.pack('>I', flags | 1))
PY
expect_status 1 imgtool mirror --sync=incremental --bitmap=b1 src.qcow2 x.qcow2
expect_match "$(err)" "bitmap 'b1' is inconsistent"
[ ! -e x.qcow2 ] || die "a refused mirror created its target"
passed
