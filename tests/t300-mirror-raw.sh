# imgtool mirror on raw images: full copies into new and existing targets,
# sets of pairs that succeed or fail whole, failures that leave no half
# target behind, cancellation, and the JSON event stream.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

ok imgtool create -q -f raw src.raw 64M
ok qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x22 20M 3M' -c 'write -P 0x33 63M 1M' src.raw

# Full copy into a new target: identical and sparse.
ok imgtool mirror src.raw new.raw
expect_eq "$(out)" "src.raw -> new.raw: 5 MiB written (sync=full)"
same_content -f raw -F raw src.raw new.raw
expect_eq "$(qemu-img map -f raw --output=json new.raw | grep -c '"data": true')" 3 "data extents"

# Existing target full of other data: zeroes are written where needed.
ok qemu-img create -q -f raw old.raw 64M
ok qemu-io -f raw -c 'write -P 0x77 0 64M' old.raw
ok imgtool mirror -q --mode=existing src.raw old.raw
expect_eq "$(out)" ""
same_content -f raw -F raw src.raw old.raw

# The JSON event stream: started, progress (monotonic), ready, completed.
ok imgtool mirror --output=json src.raw j.raw
events=$(out | sed -E 's/^\{"event": "([a-z]+)".*/\1/' | uniq | tr '\n' ' ')
expect_eq "$events" "started progress ready completed " "event sequence"
expect_match "$(out | tail -n 1)" '"bytes-read": 5242880, "bytes-written": 5242880, "bytes-zeroed": 0'
prev=0
for d in $(out | grep '"progress"' | sed -E 's/.*"done": ([0-9]+).*/\1/'); do
    [ "$d" -ge "$prev" ] || die "progress went backwards: $prev -> $d"; prev=$d
done
expect_eq "$prev" 67108864 "final progress"

# A set of pairs: all targets appear.
ok imgtool mirror -q src.raw=p1.raw src.raw=p2.raw
same_content -f raw -F raw src.raw p1.raw
same_content -f raw -F raw src.raw p2.raw

# Usage and target errors: one line, exit 1, nothing created.
expect_status 1 imgtool mirror --sync=sideways src.raw x.raw
expect_status 1 imgtool mirror --sync=bitmap src.raw x.raw
expect_match "$(err)" 'needs --bitmap=NAME'
expect_status 1 imgtool mirror --bitmap=b0 src.raw x.raw
expect_status 1 imgtool mirror --mode=absolute-paths src.raw old.raw
expect_eq "$(err)" "imgtool: old.raw: exists; use --mode=existing to write into it, or remove it"
ok qemu-img create -q -f raw small.raw 1M
expect_status 1 imgtool mirror src.raw small.raw
expect_match "$(err)" 'small.raw: target size 1048576 differs from source size 67108864'
expect_status 1 imgtool mirror --base=src.raw src.raw x.raw
[ ! -e x.raw ] || die "a failed mirror created x.raw"

# A target write failure (a full file system): the new target does not
# appear, and in a set the other new targets are removed too.
if mkdir -p mnt && mount -t tmpfs -o size=2M tmpfs mnt 2>/dev/null; then
    trap 'umount "$T/mnt" 2>/dev/null; rm -rf "$T"' EXIT
    expect_status 1 imgtool mirror src.raw mnt/full.raw
    expect_match "$(err)" 'mnt/full.raw.*No space left on device'
    expect_eq "$(ls -A mnt)" "" "files left on the full file system"
    expect_status 1 imgtool mirror src.raw=set1.raw src.raw=mnt/set2.raw
    [ ! -e set1.raw ] || die "set1.raw appeared although the set failed"
    umount mnt
else
    echo "note: cannot mount a tmpfs here; the full-file-system case is not run"
fi

# Cancellation: SIGINT stops a rate-limited mirror; exit 130, no target.
# (the binary itself, not the shell function, so that $! is its pid)
"$IMGTOOL" mirror --speed=1M src.raw slow.raw 2>"$T/cancel.err" &
pid=$!
sleep 1
kill -INT $pid
status=0; wait $pid || status=$?
expect_eq "$status" 130 "exit status after SIGINT"
expect_match "$(cat "$T/cancel.err")" 'mirror cancelled'
[ ! -e slow.raw ] || die "a cancelled mirror left slow.raw"
ls -a | grep -q imgtool-tmp && die "a cancelled mirror left a temporary file"
passed
