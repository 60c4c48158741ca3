# imgtool serve --control: the live mirror driven over its QMP control
# socket, by imgtool job and by a raw QMP client, and the shapes compared
# with what qemu-storage-daemon answers for a real blockdev-mirror (the
# same member names in the greeting, query-block-jobs and the events).
# A mirror held back by --speed refuses complete before READY; change
# switches it to write-blocking while it runs and a client writes;
# set-speed lifts the limit; complete stops the server with the target in
# sync.  Then: cancel before READY (the new target is removed, the source
# served on), and cancel of a READY job without force (QEMU's: finished as
# a copy, the source served on and writable).
. "$(dirname "$0")/serve-lib.sh"
need qemu-storage-daemon /usr/bin/python3
py=/usr/bin/python3

ok qemu-img create -f qcow2 src.qcow2 64M
ok qemu-io -c 'write -P 7 0 40M' -c 'write -P 8 50M 1M' src.qcow2
ok cp src.qcow2 qsrc.qcow2

# What a QMP session sees: the greeting's, query-block-jobs' and each
# event's member names, one line each (for the comparison with qsd).
cat > shapes.py <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rw')
def line():
    return json.loads(f.readline())
def send(cmd, args=None):
    m = {"execute": cmd, "id": "t"}
    if args is not None: m["arguments"] = args
    f.write(json.dumps(m) + "\n"); f.flush()
def reply():
    while True:
        m = line()
        if "event" in m: events.append(m); continue
        assert m.get("id") == "t", m
        return m
def keys(o): return ",".join(sorted(o))
events = []
g = line()
print("greeting", keys(g["QMP"]), keys(g["QMP"]["version"]), keys(g["QMP"]["version"]["qemu"]))
send("qmp_capabilities"); print("caps", keys(reply()))
if len(sys.argv) > 2:
    send(sys.argv[2], json.loads(sys.argv[3])); reply()
send("block-job-set-speed", {"device": "nope", "speed": 0}); print("error", json.dumps(reply()["error"]["class"]))
send("query-block-jobs"); j = reply()["return"]; print("job", keys(j[0]))
send("block-job-set-speed", {"device": j[0]["device"], "speed": 0}); reply()
while not any(e["event"] == "BLOCK_JOB_READY" for e in events):
    events.append(line())
send("block-job-complete", {"device": j[0]["device"]}); print("complete", keys(reply()))
while not any(e["event"] == "BLOCK_JOB_COMPLETED" for e in events):
    events.append(line())
for e in events:
    if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["status"] in ("created", "running", "null"):
        continue    # qsd sends these around blockdev-mirror and after; imgtool's job started earlier
    print("event", e["event"], keys(e), keys(e["data"]), keys(e["timestamp"]),
          e["data"].get("status", ""))
PY
# qemu-storage-daemon with a blockdev-mirror of qsrc.qcow2.
ok qemu-img create -f qcow2 qtgt.qcow2 64M
qsd_start qsrc.qcow2 qtgt.qcow2
qsd=$(cat "$T/qsd.pid")
ok $py shapes.py "$T/qmp.sock" blockdev-mirror \
    '{"job-id": "j", "device": "src", "target": "tgt", "sync": "full", "speed": 1048576}'
out | grep -v '^greeting' > qsd.shapes
kill "$qsd"

# The same session against imgtool serve: the same lines, except for the
# members QEMU 8.2 (actively-synced) and imgtool (copy-mode) add.
serve s -t --control="$T/c.sock" --mirror="$T/tgt.qcow2" --speed=8M src.qcow2
ok $py shapes.py "$T/c.sock"
expect_eq "$(out | head -n 1)" "greeting capabilities,version package,qemu major,micro,minor" "greeting"
out | grep -v '^greeting' | sed 's/actively-synced,//; s/,copy-mode//' > imgtool.shapes
expect_eq "$(cat imgtool.shapes)" "$(cat qsd.shapes)" "QMP shapes against qemu-storage-daemon's"
expect_match "$(out)" '^job actively-synced,auto-dismiss,.*,copy-mode,' "query-block-jobs members"
stop s
same_content src.qcow2 tgt.qcow2
qemu_clean tgt.qcow2

# imgtool job: complete before READY is refused; change while a client
# writes; set-speed; complete stops the server.
ctl=--control=$T/c.sock
serve s -t "$ctl" --mirror="$T/tgt2.qcow2" --speed=8M src.qcow2
ok imgtool job query "$ctl"
expect_match "$(out | tail -n 1)" '^mirror0 +running +background ' "query"
expect_status 2 imgtool job complete "$ctl"
expect_eq "$(err)" "imgtool: $T/c.sock: Job 'mirror0' in state 'running' cannot accept command verb 'complete'"
expect_status 2 imgtool job set-speed 0 "$ctl" other
expect_eq "$(err)" "imgtool: $T/c.sock: Block job 'other' not found"
ok imgtool job change --copy-mode=write-blocking "$ctl"
ok imgtool job query --output=json "$ctl" mirror0
expect_match "$(out)" '"copy-mode": "write-blocking"' "copy mode after change"
expect_status 2 imgtool job change --copy-mode=background "$ctl"
expect_eq "$(err)" "imgtool: $T/c.sock: job 'mirror0': the copy mode can only change from background to write-blocking"
ok imgtool job set-speed 0 "$ctl"
ok qemu-io -f raw -c 'write -P 9 3M 1M' -c 'write -P 10 63M 1M' "$(uri s)"
for i in $(seq 300); do
    imgtool job query "$ctl" | grep -q ' ready ' && break
    sleep 0.05
done
ok imgtool job query "$ctl"
expect_match "$(out | tail -n 1)" '^mirror0 +ready +write-blocking +.* 0 B +unlimited$' "query when ready"
ok imgtool job complete "$ctl"
expect_eq "$(out)" "mirror0: completed"
pid=$(cat "$T/s.pid")
for i in $(seq 500); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
kill -0 "$pid" 2>/dev/null && die "the server did not stop after complete"
same_content src.qcow2 tgt2.qcow2
qemu_clean tgt2.qcow2
ok qemu-io -c 'read -P 9 3M 1M' -c 'read -P 10 63M 1M' tgt2.qcow2

# Cancel before READY: the new target is removed, the source served on.
serve s -t "$ctl" --mirror="$T/tgt3.qcow2" --speed=8M src.qcow2
ok imgtool job cancel "$ctl"
expect_eq "$(out)" "mirror0: cancelled"
[ -e tgt3.qcow2 ] && die "a cancelled mirror left its new target"
ok qemu-io -f raw -c 'write -P 11 5M 64k' "$(uri s)"
ok imgtool job query "$ctl"
expect_eq "$(out | wc -l)" 1 "job list after cancel"
stop s
ok qemu-io -c 'read -P 11 5M 64k' src.qcow2

# Cancel of a READY job without force: QEMU finishes it as a copy; the
# source is served on, and writes after it reach the source only.
serve s -t "$ctl" --mirror="$T/tgt4.qcow2" src.qcow2
for i in $(seq 300); do
    imgtool job query "$ctl" | grep -q ' ready ' && break
    sleep 0.05
done
ok imgtool job cancel "$ctl"
expect_eq "$(out)" "mirror0: completed"
same_content src.qcow2 tgt4.qcow2
ok qemu-io -f raw -c 'write -P 12 6M 64k' "$(uri s)"
stop s
ok qemu-io -c 'read -P 12 6M 64k' src.qcow2
ok qemu-io -c 'read -P 7 6M 64k' tgt4.qcow2
passed
