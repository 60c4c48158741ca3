# Exit statuses a cron job can trust (issue 12, item 8): output that cannot
# be written fails the run; 75 ("in use, try later") only for a lock held by
# another process, never for a permanent error; messages name the user's
# target, never the temporary file; --output=json failures print a JSON
# error object.  Also item 11: the cancel flag is a C11 atomic, and
# bitmap --list counts whole granules as QEMU does.
# The source tree, found before lib.sh changes to a temporary directory.
top=$(cd "$(dirname "$0")/.." && pwd)
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-storage-daemon python3

ok imgtool create -q -f qcow2 vm.qcow2 1M

# A failed write to stdout is an error, in JSON and human mode.
expect_status 1 sh -c "'$IMGTOOL' info --output=json vm.qcow2 >/dev/full"
expect_eq "$(err)" "imgtool: write error on standard output: No space left on device"
expect_status 1 sh -c "'$IMGTOOL' info vm.qcow2 >/dev/full"
expect_status 1 sh -c "'$IMGTOOL' create -f qcow2 x.qcow2 1M >/dev/full"
expect_status 1 sh -c "'$IMGTOOL' --version >/dev/full"
ok sh -c "'$IMGTOOL' create -q -f qcow2 y.qcow2 1M >/dev/full"   # nothing to write

# A failed --output=json run prints one JSON error object on stdout.
expect_status 1 imgtool info --output=json nosuch.qcow2
expect_eq "$(out)" '{"error": {"class": "GenericError", "desc": "nosuch.qcow2: cannot open: No such file or directory"}}'
expect_eq "$(err)" "imgtool: nosuch.qcow2: cannot open: No such file or directory"
for c in "check" "map" "bitmap --list"; do
    expect_status 1 imgtool $c --output=json nosuch.qcow2
    out | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["error"]["class"]=="GenericError" and d["error"]["desc"].startswith("nosuch.qcow2: cannot open"), d'
    checks=$((checks + 1))
done
expect_status 1 imgtool mirror --output=json --max-in-flight=100 vm.qcow2 t.qcow2
expect_eq "$(out)" '{"error": {"class": "UsageError", "desc": "--max-in-flight must be between 1 and 64"}}'
# Success prints no error object; human mode never does.
ok imgtool info --output=json vm.qcow2
expect_match "$(out)" '"virtual-size": 1048576'
[ "$(out | grep -c '"error"')" = 0 ] || die "error object on success"
expect_status 1 imgtool info nosuch.qcow2
expect_eq "$(out)" ""

# The disk as its own backing file is a permanent error: exit 1, not 75.
ok imgtool export -q -B n vm.qcow2 full.qcow2
expect_status 1 imgtool export -s incremental -B n -b vm.qcow2 vm.qcow2 inc.qcow2
expect_eq "$(err)" "imgtool: vm.qcow2: this command uses the image twice (is it its own target or backing file?)"
[ ! -e inc.qcow2 ] || die "inc.qcow2 was created"
expect_status 1 imgtool mirror --mode=existing vm.qcow2 vm.qcow2
expect_match "$(err)" "uses the image twice"
# Another process's lock is still 75 (qemu-storage-daemon holds the image
# writable until its QMP monitor, read from a FIFO we keep open, says quit).
mkfifo qmp.in
qemu-storage-daemon --blockdev driver=file,filename=vm.qcow2,node-name=f \
    --blockdev driver=qcow2,file=f,node-name=q --chardev stdio,id=c \
    --monitor chardev=c <qmp.in >qsd.log 2>&1 &
qsd=$!
exec 7>qmp.in
trap 'exec 7>&-; kill $qsd 2>/dev/null; wait $qsd 2>/dev/null; rm -rf "$T"' EXIT
for i in $(seq 200); do
    awk -v ino="$(stat -c %i vm.qcow2)" '$2 == "OFDLCK" { split($6, d, ":"); if (d[3] == ino) f = 1 }
        END { exit !f }' /proc/locks && break
    [ "$i" = 200 ] && die "qemu-storage-daemon did not lock vm.qcow2"
    sleep 0.1
done
expect_status 75 imgtool export --output=json -s incremental -B n -b full.qcow2 vm.qcow2 inc.qcow2
expect_match "$(out)" '^\{"error": \{"class": "InUse", "desc": "vm.qcow2: failed to get '
echo '{"execute":"qmp_capabilities"}{"execute":"quit"}' >&7
exec 7>&-
wait $qsd

# Messages name the target, not its temporary name (the write fails: the
# file size limit, with SIGXFSZ ignored).
qemu-img create -q -f qcow2 src.qcow2 8M
ok qemu-io -c 'write -P 1 0 8M' src.qcow2
for cmd in "mirror src.qcow2 t.qcow2" "export -B m src.qcow2 t.qcow2" "convert -O qcow2 src.qcow2 t.qcow2"; do
    expect_status 1 bash -c "trap '' XFSZ; ulimit -f 2048; exec '$IMGTOOL' $cmd"
    expect_match "$(err)" '^imgtool: t\.qcow2: write error at offset [0-9]+: File too large$' "$cmd"
    [ ! -e t.qcow2 ] && [ -z "$(ls | grep imgtool-tmp)" ] || die "$cmd left files: $(ls)"
done

# Worker threads read the cancel flag: a C11 atomic, not volatile sig_atomic_t.
src=$top
[ -d "$src/cmd" ] && [ -d "$src/mirror" ] || die "no source tree at $src"
checks=$((checks + 1))
! grep -rnE 'volatile sig_atomic_t[ *]*[A-Za-z_]+ *[;,)=]' "$src/cmd" "$src/mirror" ||
    die "volatile sig_atomic_t cancel flag"

# bitmap --list counts a dirty partial last granule whole, as QEMU's
# query-block "count".
qemu-img create -q -f qcow2 b.qcow2 66048
ok qemu-img bitmap --add b.qcow2 bm
ok qemu-io -c 'write 65536 512' b.qcow2
qcount=$(printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-named-block-nodes"}' \
             '{"execute":"quit"}' |
         qemu-storage-daemon --blockdev driver=file,filename=b.qcow2,node-name=f \
             --blockdev driver=qcow2,file=f,node-name=q --chardev stdio,id=c --monitor chardev=c |
         grep -o '"name": "bm", [^}]*"count": [0-9]*' | sed 's/.*: //')
expect_eq "$qcount" 65536 "QEMU's count"
ok imgtool bitmap --list --output=json b.qcow2
expect_match "$(out | tr -d ' \n')" '"name":"bm","granularity":65536,"flags":\["auto"\],"dirty-bytes":65536\}'
passed
