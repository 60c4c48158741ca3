# imgtool job is a QMP client: driven against qemu-storage-daemon's own
# blockdev-mirror, it reads QEMU's query-block-jobs (human and JSON),
# passes QEMU's refusals on with exit status 2 (complete before ready,
# block-job-change that 7.2 lacks, a job that does not exist), sets the
# speed, and completes the job once ready, waiting for BLOCK_JOB_COMPLETED
# (QEMU replies before the job has finished).  The target then equals the
# source.  Usage errors and a missing socket exit 1.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io qemu-storage-daemon /usr/bin/python3

ok qemu-img create -f qcow2 src.qcow2 32M
ok qemu-io -c 'write -P 7 0 8M' -c 'write -P 9 20M 1M' src.qcow2
ok qemu-img create -f qcow2 tgt.qcow2 32M
qemu-storage-daemon \
    --blockdev driver=file,filename=src.qcow2,node-name=sf --blockdev driver=qcow2,file=sf,node-name=src \
    --blockdev driver=file,filename=tgt.qcow2,node-name=tf --blockdev driver=qcow2,file=tf,node-name=tgt \
    --chardev socket,path="$T/qmp.sock",server=on,wait=off,id=m --monitor chardev=m \
    --pidfile "$T/qsd.pid" --daemonize || die "qemu-storage-daemon did not start"
qsd=$(cat "$T/qsd.pid")
trap 'kill "$qsd" 2>/dev/null; rm -rf "$T"' EXIT
ctl=--control=$T/qmp.sock

expect_status 2 imgtool job cancel "$ctl"
expect_eq "$(err)" "imgtool: $T/qmp.sock: no block job is running"
ok imgtool job query "$ctl"
expect_eq "$(out)" "$(printf '%-16s %-10s %-15s %12s %12s %12s %12s' ID STATUS COPY-MODE DONE LENGTH REMAINING SPEED)"

# A mirror held back by a speed limit of 1 byte per second: it cannot be
# ready before set-speed lifts the limit.
/usr/bin/python3 - "$T/qmp.sock" <<'PY' || die "cannot start blockdev-mirror"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rw')
f.readline()
for cmd in ({"execute": "qmp_capabilities"},
            {"execute": "blockdev-mirror", "arguments": {"job-id": "j", "device": "src",
             "target": "tgt", "sync": "full", "speed": 1}}):
    f.write(json.dumps(cmd) + "\n"); f.flush()
    while True:
        m = json.loads(f.readline())
        if "error" in m: sys.exit(m["error"]["desc"])
        if "return" in m: break
PY
ok imgtool job query --output=json "$ctl" j
/usr/bin/python3 - "$(out)" <<'PY' || die "query --output=json: $(out)"
import json, sys
jobs = json.loads(sys.argv[1])
assert len(jobs) == 1, jobs
j = jobs[0]
assert (j["device"], j["type"], j["status"], j["speed"], j["ready"], j["len"]) == \
    ("j", "mirror", "running", 1, False, 32 << 20), j
PY
ok imgtool job query "$ctl"
expect_match "$(out | tail -n 1)" '^j +running +- +.* 32 MiB +.* 1 B/s$' "query"
expect_status 2 imgtool job complete "$ctl"
expect_eq "$(err)" "imgtool: $T/qmp.sock: Job 'j' in state 'running' cannot accept command verb 'complete'"
expect_status 2 imgtool job change --copy-mode=write-blocking "$ctl" j
expect_eq "$(err)" "imgtool: $T/qmp.sock: The command block-job-change has not been found"
expect_status 2 imgtool job set-speed 1M "$ctl" nope
expect_eq "$(err)" "imgtool: $T/qmp.sock: Block job 'nope' not found"
ok imgtool job set-speed 0 "$ctl"
for i in $(seq 300); do
    imgtool job query "$ctl" j | grep -q ' ready ' && break
    sleep 0.05
done
ok imgtool job query "$ctl" j
expect_match "$(out | tail -n 1)" '^j +ready +- +32 MiB +32 MiB +0 B +unlimited$' "query when ready"
ok imgtool job complete "$ctl"
expect_eq "$(out)" "j: completed"
ok imgtool job query "$ctl"
expect_eq "$(out | wc -l)" 1 "job list after completion"
kill "$qsd"
for i in $(seq 200); do kill -0 "$qsd" 2>/dev/null || break; sleep 0.05; done
same_content src.qcow2 tgt.qcow2

# Usage errors and a socket that is not there.
expect_status 1 imgtool job query
expect_match "$(err)" "--control=PATH is required"
expect_status 1 imgtool job pause "$ctl"
expect_match "$(err)" "unknown action 'pause'"
expect_status 1 imgtool job change "$ctl"
expect_match "$(err)" "change needs --copy-mode=MODE"
expect_status 1 imgtool job set-speed "$ctl"
expect_match "$(err)" "set-speed needs a SPEED"
expect_status 1 imgtool job set-speed fast "$ctl"
expect_match "$(err)" "speed 'fast' is not a valid size"
expect_status 1 imgtool job complete --force "$ctl"
expect_match "$(err)" "--force is for 'cancel' only"
expect_status 1 imgtool job query --control="$T/none.sock"
expect_eq "$(err)" "imgtool: $T/none.sock: cannot connect to the control socket: No such file or directory"
passed
