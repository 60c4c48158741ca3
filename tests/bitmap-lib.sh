# Helpers for the dirty-bitmap tests (tests/t2*-bitmap*.sh), sourced after
# lib.sh: QEMU's view of a bitmap through qemu-nbd + nbdinfo, imgtool's
# through "imgtool bitmap --dump", both as "START LENGTH" lines.
need qemu-img qemu-io qemu-nbd nbdinfo

# Each export gets its own directory (socket and pid file): a server that
# is still exiting must not remove the socket of the next one.
stop_nbd() {
    local f
    for f in "$T"/nbd.*/pid; do
        [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
        rm -f "$f"
    done
}
trap 'stop_nbd; rm -rf "$T"' EXIT

# qemu_dirty IMG BITMAP: the dirty extents QEMU reports for BITMAP, from
# qemu-nbd exporting IMG read-only with -B and nbdinfo --map reading
# qemu:dirty-bitmap:BITMAP; adjacent extents are joined.
qemu_dirty() {
    local dir map
    dir=$(mktemp -d "$T/nbd.XXXXXX")
    qemu-nbd -r -f qcow2 -B "$2" --socket="$dir/sock" --fork --pid-file="$dir/pid" "$1" ||
        die "qemu-nbd cannot export $1 with bitmap $2"
    map=$(nbdinfo --map="qemu:dirty-bitmap:$2" "nbd+unix:///?socket=$dir/sock") ||
        die "nbdinfo --map=qemu:dirty-bitmap:$2 failed"
    # The server ends with the connection; wait until it has released the
    # image's locks (it is dead, even if not yet reaped by init), so that
    # the next command may write the image.
    local pid i=0
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null
    while [ -e "/proc/$pid" ] && ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$pid/status" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 3000 ] || die "qemu-nbd $pid does not exit"
        sleep 0.01
    done
    rm -f "$dir/pid"
    awk '$3 == 1 { if (have && s + l == $1) l += $2; else { if (have) print s, l; s = $1; l = $2; have = 1 } }
         END { if (have) print s, l }' <<<"$map"
}

# imgtool_dirty IMG BITMAP: the dirty extents imgtool reads for BITMAP.
imgtool_dirty() {
    local json
    json=$("$IMGTOOL" bitmap --dump --output=json "$1" "$2") ||
        die "imgtool bitmap --dump $1 $2 failed"
    sed -n 's/^[[{]*{ "start": \([0-9]*\), "length": \([0-9]*\)}[],]*$/\1 \2/p' <<<"$json"
}

# same_dirty IMG BITMAP [EXPECTED]: QEMU and imgtool see the same dirty
# extents (and, if given, exactly EXPECTED, as "START LENGTH" lines).
same_dirty() {
    local theirs mine
    theirs=$(qemu_dirty "$1" "$2")
    mine=$(imgtool_dirty "$1" "$2")
    expect_eq "$mine" "$theirs" "dirty extents of $1 bitmap $2 (imgtool vs QEMU)"
    [ $# -lt 3 ] || expect_eq "$mine" "$3" "dirty extents of $1 bitmap $2"
}

# qemu_bitmaps IMG: the "bitmaps" list of qemu-img info --output=json on one
# line, e.g. [{"flags":["auto"],"name":"b","granularity":65536}] ("" if none).
qemu_bitmaps() {
    qemu-img info -U --output=json "$1" | tr -d ' \n' |
        sed -n 's/.*"bitmaps":\(\[.*\]\),"refcount-bits".*/\1/p'
}

# One disk and one sequence of writes that both QEMU (t200) and imgtool
# (t201) apply: a size that is not a multiple of any granularity, small
# unaligned writes, zero writes, a discard, a write across a data cluster
# of a 512-byte-granularity bitmap, and one in the partial last granule.
# bitmap_writes_64k is the result in a 64 KiB bitmap, worked out by hand.
bitmap_disk_size=$((1024 * 1024 * 1024 + 1536))
bitmap_writes=(-c 'write 0 1' -c 'write 65535 2' -c 'write -P 7 3M 700k' -c 'write -z 100M 1M'
               -c 'discard 200M 128k' -c 'write 268435455 2' -c 'write -z 512M 300M'
               -c "write $((bitmap_disk_size - 512)) 512")
bitmap_writes_64k="0 131072
3145728 720896
104857600 1048576
209715200 131072
268369920 131072
536870912 314572800
1073741824 1536"
