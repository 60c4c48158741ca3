# imgtool serve --mirror --on-complete=switch: complete pivots the export
# to the mirror's target while the clients stay connected (QEMU's
# block-job-complete).  One qemu-io session (driven through a fifo) and
# one python libnbd client with many requests in flight keep writing
# before, during and after `imgtool job complete`; neither reconnects or
# sees an error.  After the switch the source's lock is released (qemu-img
# opens it without -U while the server runs) and it holds no later
# write; its bitmap is stored, not in use.  The -B context answers from
# the target's bitmap of the same name (marked by the writes after the
# switch), -A from the target's chain.  After SIGTERM (exit 0) the target
# equals a model that got the same writes, and qemu-img check finds it
# clean.
. "$(dirname "$0")/serve-mirror-lib.sh"
need nbdsh /usr/bin/python3
py=/usr/bin/python3

ok qemu-img create -f qcow2 src.qcow2 64M
ok qemu-io -c 'write -P 7 0 8M' -c 'write -P 8 30M 2M' src.qcow2
ok qemu-img bitmap --add src.qcow2 b0
ok qemu-img create -f qcow2 tgt.qcow2 64M
ok qemu-img bitmap --add tgt.qcow2 b0
ok qemu-img convert -O raw src.qcow2 model.raw

serve_bg s -t -e 4 --control="$T/c.sock" --mirror="$T/tgt.qcow2" --copy-mode=write-blocking \
    --on-complete=switch -B b0 -A src.qcow2

# qemu-io, connected once for the whole test.
mkfifo q.in
qemu-io -f raw "$(uri s)" <q.in >q.out 2>&1 &
qio_pid=$!
exec 7>q.in
# qio SCRIPT: the commands (one per line) to the model, then to the
# session one at a time, each once the one before is answered (qemu-io
# reading a pipe takes one line per wakeup); dies on an error.
answers() { grep -cE '(wrote|read) [0-9]+/|failed|verification' q.out; }
qio() {
    printf '%s\n' "$1" | qemu-io -f raw model.raw >/dev/null || die "model write failed"
    local line n i
    while IFS= read -r line; do
        n=$(answers)
        printf '%s\n' "$line" >&7
        for i in $(seq 3000); do
            [ "$(answers)" -gt "$n" ] && break
            sleep 0.01
        done
        [ "$(answers)" -gt "$n" ] || die "qemu-io did not answer '$line': $(tail -5 q.out)"
    done <<<"$1"
    grep -E 'failed|verification|error' q.out && die "qemu-io saw an error: $(cat q.out)"
    return 0
}

qio "$(writer_script 1 150 40000000)"
wait_event s ready

# The python client: 16 writes in flight at once on its own connection, in
# [48M, 64M) (64 KiB slots, a pattern per write, every 8th a zero write,
# a flush every 32), until it has done 300 writes after $T/switched
# appears; then it reads every slot back through the same connection and
# writes the final contents into the model.
cat > writer.py <<'PY'
import nbd, os, sys
uri, flag, model = sys.argv[1:4]
h = nbd.NBD(); h.connect_uri(uri)
base, slot, nslots = 48 << 20, 64 << 10, 256
final = {}
inflight = []
i = after = 0
before = None
def pattern(i):
    return None if i % 8 == 7 else bytes([i % 251 + 1]) * slot
while after < 300:
    while len(inflight) >= 16:
        h.poll(-1)
        inflight = [c for c in inflight if not h.aio_command_completed(c)]
    s = i % nslots
    p = pattern(i)
    off = base + s * slot
    inflight.append(h.aio_zero(slot, off) if p is None else h.aio_pwrite(p, off))
    final[s] = p
    if i % 32 == 31:
        inflight.append(h.aio_flush())
    i += 1
    if os.path.exists(flag):
        before = i if before is None else before
        after += 1
while inflight:
    h.poll(-1)
    inflight = [c for c in inflight if not h.aio_command_completed(c)]
for s, p in final.items():
    got = h.pread(slot, base + s * slot)
    assert got == (p or bytes(slot)), "slot %d reads back wrong" % s
h.shutdown()
with open(model, "r+b") as f:
    for s, p in final.items():
        f.seek(base + s * slot); f.write(p or bytes(slot))
print(before, i)
PY
$py writer.py "$(uri s)" "$T/switched" model.raw >py.out 2>py.err &
py_pid=$!

# qemu-io writes on meanwhile too.
qio "$(writer_script 2 200 40000000)" &
qio_bg=$!
ok imgtool job complete --control="$T/c.sock"
expect_eq "$(out)" "mirror0: completed"
wait_event s switched
wait "$qio_bg" || die "qemu-io failed during the switch"
touch switched
expect_match "$(grep -E '"event": "(completed|switched)"' s.ev | tr '\n' ' ')" \
    '^\{"event": "completed".*\} \{"event": "switched", "export": "", "image": "'"$T"'/tgt.qcow2"\} $' \
    "events: completed, then switched naming the target"
ok imgtool job query --control="$T/c.sock"
expect_eq "$(out | wc -l)" 1 "no job after the switch"

# The source: unlocked (qemu-img and qemu-io open it without -U while the
# server runs), its bitmap stored and not in use.
ok qemu-img info --output=json src.qcow2
expect_match "$(out | tr -d ' \n')" '"bitmaps":\[\{"flags":\["auto"\],"name":"b0"' "source bitmap stored, not in use"
ok qemu-img check src.qcow2

# After the switch: qemu-io's session writes on; -B and -A answer from the
# target (b0 clean in [44M, 45M) before the write there, dirty after).
cat > ctx.py <<'PY'
import nbd, sys
h = nbd.NBD()
h.add_meta_context("qemu:dirty-bitmap:b0"); h.add_meta_context("qemu:allocation-depth")
h.connect_uri(sys.argv[1])
out = []
def cb(ctx, off, ents, err):
    out.append("%s %s" % (ctx, ents[:2]))
h.block_status(1 << 20, 44 << 20, cb, nbd.CMD_FLAG_REQ_ONE)
print("\n".join(sorted(out)))
PY
ok $py ctx.py "$(uri s)"
expect_eq "$(out)" "qemu:allocation-depth [1048576, 0]
qemu:dirty-bitmap:b0 [1048576, 0]" "contexts before the write after the switch"
qio "write -P 171 44M 1M"
qio "$(writer_script 3 100 40000000)"
ok $py ctx.py "$(uri s)"
expect_eq "$(out)" "qemu:allocation-depth [1048576, 1]
qemu:dirty-bitmap:b0 [1048576, 1]" "contexts after the write after the switch"
ok qemu-io -c 'read -P 0 44M 1M' src.qcow2
wait "$py_pid" || die "the python client failed: $(cat py.err)"
read -r before total <py.out
[ "$before" -gt 16 ] || die "the python client wrote only $before times before the switch"
qio "read -P 171 44M 1M"
exec 7>&-
wait "$qio_pid" || die "qemu-io failed: $(cat q.out)"

expect_eq "$(server_status s TERM)" 0 "exit status after SIGTERM"
ok qemu-img compare -f raw -F qcow2 model.raw tgt.qcow2
qemu_clean tgt.qcow2
ok qemu-img info --output=json tgt.qcow2
expect_match "$(out | tr -d ' \n')" '"bitmaps":\[\{"flags":\["auto"\],"name":"b0"' "target bitmap stored"
passed
