# Image locking against QEMU's own tools: imgtool takes the OFD locks of
# QEMU's file-posix driver (byte 100+bit "I use permission bit", 200+bit
# "nobody else may"), so each side sees the other's.
#
# The holders are real long-running processes, never sleeps:
#  - qemu-io reading commands from a FIFO that this script keeps open;
#  - imgtool io with thousands of -c commands writing its report into a
#    pipe nobody reads: it blocks in write() with the image open until the
#    pipe is drained.
# Each waits until its locks are visible in /proc/locks; an EXIT trap kills
# whatever is still running.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io
[ -r /proc/locks ] || skip "needs /proc/locks"

holder_pid=
cleanup() {
    exec 4>&- 5<&-
    if [ -n "$holder_pid" ]; then
        kill "$holder_pid" 2>/dev/null
        wait "$holder_pid" 2>/dev/null
    fi
    holder_pid=
}
trap 'cleanup; rm -rf "$T"' EXIT

# lock_held FILE BYTE: some open file description holds a lock on BYTE of
# FILE.  /proc/locks lines: "N: OFDLCK ADVISORY READ -1 MAJ:MIN:INODE START END".
lock_held() {
    local ino; ino=$(stat -c %i "$1")
    awk -v ino="$ino" -v byte="$2" '
        $2 == "OFDLCK" { split($6, dev, ":"); if (dev[3] == ino && $7 <= byte && byte <= $8) found = 1 }
        END { exit !found }' /proc/locks
}
# wait_locked FILE BYTE...: wait (up to 20 s) for the holder to take them.
wait_locked() {
    local f=$1 i b all; shift
    for i in $(seq 200); do
        all=1
        for b in "$@"; do lock_held "$f" "$b" || { all=0; break; }; done
        [ $all = 1 ] && return 0
        kill -0 "$holder_pid" 2>/dev/null || die "the holder of $f exited early"
        sleep 0.1
    done
    die "no lock on bytes $* of $f after 20 s"
}
# qemu_hold ARGS...: qemu-io ARGS keeps the image open until release.
qemu_hold() {
    rm -f hold.fifo; mkfifo hold.fifo
    qemu-io "$@" <hold.fifo >/dev/null 2>&1 &
    holder_pid=$!
    exec 4>hold.fifo
}
release() {
    exec 4>&-
    local rc=0
    wait "$holder_pid" || rc=$?
    holder_pid=
    [ $rc = 0 ] || die "qemu-io holder exited with status $rc"
}
# imgtool_hold ARGS...: imgtool io ARGS with 5000 copies of the last -c
# command: its report (over 100 KiB) fills a pipe, so it cannot finish
# before imgtool_release drains the pipe.
imgtool_hold() {
    local cmd=$1; shift
    local args=() i
    for i in $(seq 5000); do args+=(-c "$cmd"); done
    rm -f out.fifo; mkfifo out.fifo
    "$IMGTOOL" io "${args[@]}" "$@" >out.fifo 2>hold.err &
    holder_pid=$!
    exec 5<out.fifo
}
imgtool_release() {
    local lines; lines=$(cat <&5 | wc -l)
    exec 5<&-
    local rc=0
    wait "$holder_pid" || rc=$?
    holder_pid=
    [ $rc = 0 ] || { cat hold.err >&2; die "imgtool holder exited with status $rc"; }
    expect_eq "$lines" 5000 "lines printed by the imgtool holder"
}
# refused STATUS FILE CMD...: CMD exits STATUS with one line naming FILE.
refused() {
    local want=$1 file=$2; shift 2
    expect_status "$want" "$@"
    expect_eq "$(err | wc -l)" 1 "lines of error from '$*'"
    expect_match "$(err)" "^imgtool: $file: failed to get .* lock: the image is in use by another process" \
        "error from '$*'"
}

ok imgtool create -q -f raw a.raw 1M
ok imgtool io -q -c 'write -P 0xa1 0 1M' a.raw
ok imgtool create -q -f raw src.raw 1M
ok imgtool io -q -c 'write -P 0x5c 0 64k' src.raw
inode=$(stat -c %i a.raw)

# --- qemu-io has the image open read-write (it locks bytes 100 and 101:
# consistent read and write).  imgtool neither writes it nor, without -U,
# reads it: it does not share "write" with anyone.
qemu_hold -f raw a.raw
wait_locked a.raw 100 101
refused 1 a.raw imgtool io -c 'write 0 512' a.raw
expect_match "$(err)" 'shared "write" lock.*\(stop it first\)$'
refused 1 a.raw imgtool io -c 'discard 0 4k' a.raw
refused 1 a.raw imgtool resize a.raw 2M
refused 1 a.raw imgtool convert -n src.raw a.raw
refused 1 a.raw imgtool convert -n -O raw src.raw a.raw
refused 1 a.raw imgtool create -f raw a.raw 4M
expect_eq "$(out)" "" "create output before its error"
# create refused: the very same file, untouched, no temporary left behind.
expect_eq "$(stat -c %i.%s a.raw)" "$inode.1048576" "inode.size after refused create"
ls | grep -q imgtool-tmp && die "refused create left a temporary file"
refused 1 a.raw imgtool info a.raw
expect_match "$(err)" 'shared "write" lock.*use -U to read anyway\)$'
refused 1 a.raw imgtool map a.raw
refused 1 a.raw imgtool io -r -c 'read 0 512' a.raw
# compare's errors are exit status 2 (1 means "different").
refused 2 a.raw imgtool compare a.raw src.raw
refused 2 a.raw imgtool compare src.raw a.raw
# With -U the reads work, and see what QEMU sees.
ok imgtool info -U a.raw
expect_match "$(out)" '^virtual size: 1 MiB \(1048576 bytes\)$'
ok imgtool map -U --output=json a.raw
expect_eq "$(out)" "$(qemu-img map -U -f raw --output=json a.raw)" "map -U"
ok imgtool compare -U a.raw a.raw
expect_eq "$(out)" "Images are identical."
expect_status 1 imgtool compare -U a.raw src.raw
expect_eq "$(out)" "Content mismatch at offset 0!"
ok imgtool io -r -U -c 'read -P 0xa1 0 1M' a.raw
ok imgtool convert -U a.raw copy.raw
same_content -f raw -F raw a.raw copy.raw
# -U does not make a write possible.
expect_status 1 imgtool io -U -c 'write 0 512' a.raw
expect_match "$(err)" '-U is only for reading'
release
# Once qemu-io is gone, imgtool writes again.
ok imgtool io -c 'write -P 0xa2 0 512' a.raw
ok qemu-io -f raw -c 'read -P 0xa2 0 512' -c 'read -P 0xa1 512 1047552' a.raw

# --- qemu-io -r on a raw image takes only "consistent read" (byte 100) and
# shares everything, so by QEMU's rules writers may come: imgtool, like
# qemu-io, reads it without -U and may write it.
qemu_hold -r -f raw a.raw
wait_locked a.raw 100
lock_held a.raw 201 && die "qemu-io -r unexpectedly refuses writers"
ok imgtool info a.raw
ok imgtool map --output=json a.raw
expect_eq "$(out)" "$(qemu-img map -f raw --output=json a.raw)" "map under a reader"
ok imgtool compare a.raw a.raw
ok imgtool io -r -c 'read -P 0xa2 0 512' a.raw
ok qemu-io -f raw -c 'write -P 0xa3 0 512' a.raw
ok imgtool io -c 'write -P 0xa4 0 512' a.raw
release

# --- A reader that refuses writers, as a VM's read-only disk does: qemu-io
# -r on a qcow2 image locks "consistent read" and refuses others "write"
# and "resize" (bytes 100, 201, 203).  imgtool, opening the same host file
# as raw, reads it without -U but may not write it; qemu-io agrees.
ok qemu-img create -q -f qcow2 q.qcow2 1M
qemu_hold -r -f qcow2 q.qcow2
wait_locked q.qcow2 100 201 203
ok imgtool info -f raw q.qcow2
expect_match "$(out)" '^file format: raw$'
ok imgtool map -f raw q.qcow2
ok imgtool io -f raw -r -c 'read 0 512' q.qcow2
refused 1 q.qcow2 imgtool io -f raw -c 'write 0 512' q.qcow2
expect_match "$(err)" 'failed to get "write" lock'
refused 1 q.qcow2 imgtool resize -f raw q.qcow2 4M
refused 1 q.qcow2 imgtool convert -n -O raw src.raw q.qcow2
refused 1 q.qcow2 imgtool create -f raw q.qcow2 1M
expect_status 1 qemu-io -f raw -c 'write 0 512' q.qcow2
expect_match "$(err)" 'Failed to get "write" lock'
release
qemu_clean q.qcow2

# --- imgtool holds the image read-write: QEMU may not write or resize it,
# but may read it (imgtool shares "consistent read").
imgtool_hold 'write -P 0xb1 4k 4k' a.raw
wait_locked a.raw 100 101 201
expect_status 1 qemu-io -f raw -c 'write 0 512' a.raw
expect_match "$(err)" "Failed to get \"write\" lock"
expect_status 1 qemu-img resize -f raw a.raw 2M
expect_match "$(err)" "Failed to get \"write\" lock"
expect_status 1 qemu-img convert -n -f raw -O raw src.raw a.raw
expect_match "$(err)" "Failed to get \"write\" lock"
ok qemu-io -r -f raw -c 'read -P 0xa4 0 512' a.raw
# and a second imgtool is refused like any other process.
refused 1 a.raw imgtool io -c 'write 0 512' a.raw
imgtool_release
ok qemu-io -f raw -c 'read -P 0xb1 4k 4k' a.raw

# --- imgtool reads the image: QEMU may read but not write it...
imgtool_hold 'read -P 0xb1 4k 4k' -r a.raw
wait_locked a.raw 100 201
lock_held a.raw 101 && die "a read-only imgtool holds the write lock"
expect_status 1 qemu-io -f raw -c 'write 0 512' a.raw
expect_match "$(err)" "Failed to get \"write\" lock"
ok qemu-io -r -f raw -c 'read -P 0xb1 4k 4k' a.raw
imgtool_release

# ...unless imgtool reads with -U, which refuses nobody anything.
imgtool_hold 'read 0 512' -r -U a.raw
wait_locked a.raw 100
lock_held a.raw 201 && die "imgtool -U refuses others the write permission"
ok qemu-io -f raw -c 'write -P 0xc1 8k 512' a.raw
imgtool_release
ok imgtool io -r -c 'read -P 0xc1 8k 512' a.raw
passed
