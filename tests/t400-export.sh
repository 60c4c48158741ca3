# imgtool export: a scripted week of backups (a full one, then nightly
# incrementals after random writes by imgtool and by qemu-io), each chain
# member read through its chain equal to a raw snapshot of the disk taken
# that night; a differential backup from a checkpoint; and cron safety:
# a failed or killed export leaves no backup and the bitmap as it was,
# the next run succeeds, and a concurrent run is refused.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

ok imgtool create -q -f qcow2 -o cluster_size=64k disk.qcow2 64M
ok qemu-io -c 'write -P 0x10 0 16M' -c 'write -P 0x11 40M 8M' disk.qcow2

# Night 0: the full backup starts the tracking bitmap and a checkpoint.
ok imgtool export --bitmap=nightly --checkpoint=week1 disk.qcow2 b0.qcow2
expect_match "$(out)" '^b0.qcow2: full backup of disk.qcow2, 24 MiB written in [0-9.]+ s$'
ok qemu-img convert -U -O raw disk.qcow2 night0.raw
expect_eq "$(imgtool bitmap --list --output=json disk.qcow2 | tr -d ' \n')" \
    '[{"name":"nightly","granularity":65536,"flags":["auto"],"dirty-bytes":0},{"name":"week1","granularity":65536,"flags":["auto"],"dirty-bytes":0}]' \
    "bitmaps after the full backup"

# Random writes of one day, alternately by imgtool and qemu-io.
day_writes() {
    python3 - "$1" > day.cmds <<'PY'
import random, sys
r = random.Random(int(sys.argv[1]))
for i in range(12):
    off = r.randrange(0, 64 << 20, 512)
    ln = min(r.choice((512, 4096, 65536, 300 << 10, 1 << 20)), (64 << 20) - off)
    kind = r.random()
    if kind < 0.7:
        print("write -P %d %d %d" % (r.randrange(1, 255), off, ln))
    elif kind < 0.9:
        print("write -z %d %d" % (off, ln))
    else:
        print("discard %d %d" % (off, ln))
PY
    local args=()
    while read -r c; do args+=(-c "$c"); done < day.cmds
    if [ $(($1 % 2)) = 0 ]; then ok imgtool io -q "${args[@]}" disk.qcow2
    else ok qemu-io "${args[@]}" disk.qcow2; fi
}

prev=b0.qcow2
for night in 1 2 3 4 5; do
    day_writes $night
    ok imgtool export --sync=incremental --bitmap=nightly -b $prev --output=json disk.qcow2 b$night.qcow2
    expect_match "$(out)" "\"sync\": \"incremental\""
    # The backup holds what changed that day only: far less than the disk.
    written=$(out | sed -n 's/.*"bytes-written": \([0-9]*\).*/\1/p')
    [ "$written" -lt $((16 << 20)) ] || die "night $night wrote $written bytes"
    ok qemu-img convert -U -O raw disk.qcow2 night$night.raw
    prev=b$night.qcow2
done

# Every night restores exactly, through its chain; every file checks clean.
for night in 0 1 2 3 4 5; do
    same_content -F raw b$night.qcow2 night$night.raw
    qemu_clean b$night.qcow2
done
expect_eq "$(qemu-img info --output=json b5.qcow2 | sed -n 's/.*"backing-filename": "\(.*\)".*/\1/p')" \
          "b4.qcow2" "relative backing name"
qemu_clean disk.qcow2

# A differential backup from the checkpoint: everything since night 0,
# backed by the full backup; the checkpoint keeps counting.
ok imgtool export --sync=differential --since=week1 -b b0.qcow2 disk.qcow2 diff.qcow2
same_content -F raw diff.qcow2 night5.raw
expect_eq "$(qemu-img info --output=json diff.qcow2 | sed -n 's/.*"backing-filename": "\(.*\)".*/\1/p')" "b0.qcow2" "differential backing"
week1=$(imgtool bitmap --dump --output=json disk.qcow2 week1 | tr -d ' \n')
[ "$week1" != "[]" ] || die "the checkpoint was cleared by a differential backup"

# A restore image: convert of a chain member is standalone and equal.
ok imgtool convert -O qcow2 b3.qcow2 restore3.qcow2
same_content -F raw restore3.qcow2 night3.raw
expect_eq "$(qemu-img info --output=json restore3.qcow2 | grep -c backing-filename)" 0 "standalone restore"

# Usage: what each mode needs, and no overwriting.
expect_status 1 imgtool export --sync=incremental --bitmap=nightly disk.qcow2 x.qcow2
expect_match "$(err)" 'needs --backing=FILE, the previous backup'
expect_status 1 imgtool export --sync=incremental -b b5.qcow2 disk.qcow2 x.qcow2
expect_status 1 imgtool export --sync=incremental --bitmap=nightly -b b5.qcow2 disk.qcow2 b5.qcow2
expect_match "$(err)" 'b5.qcow2: exists; a backup never overwrites an image'
expect_status 1 imgtool export --sync=incremental --bitmap=nosuch -b b5.qcow2 disk.qcow2 x.qcow2
expect_match "$(err)" "no bitmap 'nosuch'"
[ ! -e x.qcow2 ] || die "a refused export created x.qcow2"

# --- Cron safety ---
day_writes 6
ok qemu-img convert -U -O raw disk.qcow2 night6.raw
before=$(imgtool bitmap --dump --output=json disk.qcow2 nightly | tr -d ' \n')
[ "$before" != "[]" ] || die "no changes to back up"

# A failure (the backup's file system is full): no backup, bitmap as it was.
mkdir mnt
if mount -t tmpfs -o size=1M tmpfs mnt 2>/dev/null; then
    trap 'umount "$T/mnt" 2>/dev/null; rm -rf "$T"' EXIT
    expect_status 1 imgtool export --sync=incremental --bitmap=nightly -b "$T/b5.qcow2" disk.qcow2 mnt/b6.qcow2
    expect_match "$(err)" 'No space left on device'
    expect_eq "$(ls -A mnt)" "" "files left by a failed export"
    expect_eq "$(imgtool bitmap --dump --output=json disk.qcow2 nightly | tr -d ' \n')" "$before" "bitmap after a failed export"
    umount mnt
fi

# kill -9 at several points of a slow export: never a backup, never a
# changed bitmap, no temporary file left once the next run is done.
for delay in 0.05 0.2 0.4 0.7; do
    "$IMGTOOL" export --speed=2M --sync=incremental --bitmap=nightly -b b5.qcow2 disk.qcow2 b6.qcow2 \
        >/dev/null 2>&1 &
    pid=$!
    sleep $delay
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    [ ! -e b6.qcow2 ] || die "a killed export (after ${delay}s) left b6.qcow2"
    expect_eq "$(imgtool bitmap --dump --output=json disk.qcow2 nightly | tr -d ' \n')" "$before" "bitmap after kill -9 at ${delay}s"
    qemu_clean disk.qcow2
done

# A second export while one runs is refused by the lock, exit 75.
"$IMGTOOL" export --speed=1M --sync=incremental --bitmap=nightly -b b5.qcow2 disk.qcow2 slow.qcow2 \
    >/dev/null 2>&1 &
pid=$!
for i in $(seq 50); do grep -q "$(stat -c %i disk.qcow2) 201 201" /proc/locks && break; sleep 0.1; done
expect_status 75 imgtool export --sync=incremental --bitmap=nightly -b b5.qcow2 disk.qcow2 other.qcow2
expect_match "$(err)" 'disk.qcow2: failed to get "write" lock'
kill -INT $pid
status=0; wait $pid || status=$?
expect_eq "$status" 130 "exit status of the interrupted export"
[ ! -e slow.qcow2 ] && [ ! -e other.qcow2 ] || die "a refused or interrupted export left a backup"

# The next night's run succeeds, cleans the temporaries and the chain holds.
ok imgtool export -q --sync=incremental --bitmap=nightly -b b5.qcow2 disk.qcow2 b6.qcow2
ls -a | grep -q 'imgtool-tmp' && die "temporary files left: $(ls -a | grep imgtool-tmp)"
same_content -F raw b6.qcow2 night6.raw
qemu_clean b6.qcow2
expect_eq "$(imgtool bitmap --dump --output=json disk.qcow2 nightly | tr -d ' \n')" "[]" "bitmap after the next run"
passed
