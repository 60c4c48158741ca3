# imgtool serve against qemu-nbd on the same image: what nbdinfo sees
# (export flags, block sizes, contexts, base:allocation, -B bitmaps, -A
# allocation depth) is byte for byte the same; qemu-io and qemu-img read and
# write through it; -r refuses writes; several exports; SIGTERM stops
# cleanly with the bitmaps stored, kill -9 leaves them in use.
. "$(dirname "$0")/serve-lib.sh"

qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -c "write -P 1 0 3M" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-img bitmap --add top.qcow2 b0
qemu-img bitmap --add -g 512k top.qcow2 b1
qemu-io -c "write -P 2 100k 70k" -c "write -P 3 5M 1M" -c "write -z 9M 10k" \
    -c "write -z 12M 128k" top.qcow2 >/dev/null
cp top.qcow2 orig.qcow2

# The same view from both servers (read-only, so both open the same file).
qnbd q -r -f qcow2 -B b0 -B b1 -A -t top.qcow2
serve s -r -f qcow2 -B b0 -B b1 -A -t top.qcow2
for srv in q s; do
    ok nbdinfo --json "$(uri $srv)"; out | grep -v '"uri"' > $srv.json
    ok nbdinfo --list --json "$(uri $srv)"; out | grep -v '"uri"' > $srv.list
    for ctx in base:allocation qemu:dirty-bitmap:b0 qemu:dirty-bitmap:b1 qemu:allocation-depth; do
        ok nbdinfo --map=$ctx "$(uri $srv)"; out > "$srv-$ctx.map"
    done
done
for f in q.json q.list q-*.map; do
    checks=$((checks + 1))
    cmp -s "$f" "s${f#q}" || { diff "$f" "s${f#q}" >&2; die "$f: imgtool serve differs from qemu-nbd"; }
done
expect_eq "$(grep -c dirty s-qemu:dirty-bitmap:b1.map)" 4 "dirty extents of b1"
expect_match "$(cat s.json)" '"is_read_only": true' "read-only export"
# Reads through the export are the image's.
ok qemu-img convert -f raw -O raw "$(uri s)" copy.raw
same_content -f qcow2 top.qcow2 -F raw copy.raw
expect_status 1 qemu-io -f raw -c "write 0 4k" "$(uri s)"
expect_match "$(err)" "Operation not permitted|read-only|Permission denied" "write to -r export"
stop q; stop s

# Writable: qemu-io writes land in the image and mark its enabled bitmap.
serve s -f qcow2 -B b0 top.qcow2
ok qemu-io -f raw -c "write -P 7 40M 64k" -c "write -z 41M 1M" -c "discard 0 64k" \
    -c "read -P 7 40M 64k" -c "flush" "$(uri s)"
expect_match "$(out)" "read 65536/65536 bytes at offset 41943040" "read back"
stop s
qemu_clean top.qcow2
ok qemu-io -f qcow2 -c "read -P 7 40M 64k" -c "read -P 0 41M 1M" top.qcow2
ok qemu-img info --output=json top.qcow2
expect_eq "$(out | grep -c in-use)" 0 "bitmaps stored consistent at SIGTERM"
ok imgtool bitmap --dump top.qcow2 b0
expect_match "$(out)" "0x2800000 +0x10000" "the client write is in b0"

# The non-forking server: JSON events, SIGTERM ends it with status 0.
"$IMGTOOL" serve --output=json -t -k "$T/j.sock" -x one top.qcow2 > events 2>&1 &
jpid=$!
servers+=("$T/j.pidfile"); echo $jpid > "$T/j.pidfile"
for i in $(seq 500); do grep -q listening events && break; sleep 0.02; done
ok nbdinfo --size "nbd+unix:///one?socket=$T/j.sock"
expect_eq "$(out)" 67108864 "size"
expect_status 1 nbdinfo --size "nbd+unix:///two?socket=$T/j.sock"
kill -TERM $jpid; status=0; wait $jpid || status=$?
expect_eq "$status" 0 "exit status after SIGTERM"
expect_eq "$(head -1 events)" "{\"event\": \"listening\", \"socket\": \"$T/j.sock\"}" "listening event"
expect_eq "$(sed -n 2p events)" '{"event": "client-connected", "peer": "unix socket", "export": "one"}' "connect event"
expect_eq "$(tail -1 events)" '{"event": "stopped"}' "stopped event"
[ ! -e "$T/j.sock" ] || die "socket left behind"

# Several exports in one server, each with its own name and description.
qemu-img create -q -f raw second.raw 1M
serve m -r -x disk -D "the disk" -x other -D "a raw one" -t top.qcow2 second.raw
ok nbdinfo --list "$(uri m)"
expect_match "$(out)" "export=\"disk\"" "first export listed"
expect_match "$(out)" "description: a raw one" "second description"
ok nbdinfo --size "$(uri m other)"
expect_eq "$(out)" 1048576 "second export's size"
stop m

# The image locks are QEMU's: a writable export excludes qemu-img writers.
serve s top.qcow2
expect_status 1 qemu-io -c "write 0 4k" top.qcow2
expect_match "$(err)" "lock" "qemu-io sees the lock"
# kill -9: the bitmaps stay marked in use, as after a QEMU crash.
ok qemu-io -f raw -c "write -P 9 2M 4k" "$(uri s)"
stop s KILL
ok qemu-img info --output=json top.qcow2
expect_match "$(out)" '"in-use"' "bitmap in use after kill -9"
qemu_clean top.qcow2
passed
