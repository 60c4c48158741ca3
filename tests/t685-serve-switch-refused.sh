# imgtool serve --on-complete=switch when the switch cannot be made: a -B
# bitmap the target lacks refuses it before anything is done (the job
# stays READY; complete --stop then works); a target renamed away while
# the job runs is still switched to (the job hands over the image it has
# open), under a client that stays connected.  A
# plain QMP block-job-complete gets the server's --on-complete; imgtool
# job complete --stop overrides it.  An NBD target is switched to over a
# connection the job had.  Usage errors.
. "$(dirname "$0")/serve-mirror-lib.sh"
need nbdsh /usr/bin/python3
py=/usr/bin/python3
ctl=--control=$T/c.sock

ok qemu-img create -f qcow2 src.qcow2 16M
ok qemu-io -c 'write -P 7 0 4M' src.qcow2
ok qemu-img bitmap --add src.qcow2 b0

# Usage.
expect_status 1 imgtool serve -k s.sock --on-complete=maybe --mirror=t.qcow2 "$ctl" src.qcow2
expect_eq "$(err | head -n 1)" "imgtool serve: --on-complete must be stop or switch"
expect_status 1 imgtool serve -k s.sock --on-complete=switch --mirror=t.qcow2 src.qcow2
expect_eq "$(err | head -n 1)" "imgtool serve: --on-complete=switch is for complete commands on the control socket: it needs --control=PATH (SIGTERM always stops)"
expect_status 1 imgtool serve -k s.sock --on-complete=stop src.qcow2
expect_eq "$(err | head -n 1)" "imgtool serve: the mirror options need --mirror=TARGET"
expect_status 1 imgtool job complete --switch --stop "$ctl"
expect_eq "$(err | head -n 1)" "imgtool job: --switch and --stop cannot be combined"
expect_status 1 imgtool job cancel --switch "$ctl"
expect_eq "$(err | head -n 1)" "imgtool job: --switch is for 'complete' only"

# -B b0: the new target has no bitmap b0, so it cannot be served in the
# source's place.
serve_bg s -t "$ctl" --mirror="$T/tgt.qcow2" -B b0 src.qcow2
wait_event s ready
expect_status 2 imgtool job complete --switch "$ctl"
expect_eq "$(err)" "imgtool: $T/c.sock: no switch (the job stays ready): $T/tgt.qcow2: the target has no bitmap 'b0' (offered as qemu:dirty-bitmap:b0): it cannot take the source's place"
ok imgtool job query "$ctl"
expect_match "$(out | tail -n 1)" '^mirror0 +ready ' "still ready after the refused switch"
ok imgtool job complete --stop "$ctl"
expect_eq "$(server_status s)" 0 "exit status after complete --stop"
same_content src.qcow2 tgt.qcow2
grep -q '"event": "switch' s.ev && die "a refused switch printed a switch event"

# The target renamed away while the job has it open: the export switches
# to the image the job holds (it is handed over open, never opened again
# by name), so the switch still succeeds; the client stays connected and
# writes before and after, and what it wrote after lands in the renamed
# file, not in the source.
ok qemu-img create -f qcow2 tgt2.qcow2 16M
serve_bg s -t -e 2 "$ctl" --mirror="$T/tgt2.qcow2" --copy-mode=write-blocking \
    --on-complete=switch src.qcow2
cat > client.py <<'PY'
import nbd, os, sys, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x21" * 65536, 0)
open("written", "w").close()
while not os.path.exists("switched"):
    time.sleep(0.02)
h.pwrite(b"\x22" * 65536, 1 << 20)
h.flush()
assert h.pread(65536, 0) == b"\x21" * 65536
assert h.pread(65536, 1 << 20) == b"\x22" * 65536
h.shutdown()
PY
$py client.py "$(uri s)" >py.out 2>&1 &
py_pid=$!
for i in $(seq 500); do [ -e written ] && break; sleep 0.02; done
wait_event s ready
mv tgt2.qcow2 moved.qcow2
ok imgtool job complete "$ctl"
wait_event s switched
touch switched
wait "$py_pid" || die "the client failed after the switch: $(cat py.out)"
ok qemu-io -f raw -c 'write -P 35 2M 64k' "$(uri s)"
expect_eq "$(server_status s TERM)" 0 "exit status after SIGTERM"
ok qemu-io -c 'read -P 33 0 64k' -c 'read -P 34 1M 64k' -c 'read -P 35 2M 64k' moved.qcow2
ok qemu-io -c 'read -P 33 0 64k' -c 'read -P 7 1M 64k' -c 'read -P 7 2M 64k' src.qcow2
qemu_clean src.qcow2
qemu_clean moved.qcow2

# A QMP client's block-job-complete {device}: the server's default
# (switch here); imgtool job complete --stop overrides it.
cat > qmp.py <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rw')
f.readline()
for cmd in ({"execute": "qmp_capabilities"}, {"execute": "block-job-complete", "arguments": {"device": "mirror0"}}):
    f.write(json.dumps(cmd) + "\n"); f.flush()
    while True:
        m = json.loads(f.readline())
        if "event" not in m:
            break
    assert m == {"return": {}}, m
PY
serve_bg s -t "$ctl" --mirror="$T/tgt3.qcow2" --on-complete=switch src.qcow2
wait_event s ready
ok $py qmp.py "$T/c.sock"
wait_event s switched
ok qemu-io -f raw -c 'write -P 36 8M 64k' "$(uri s)"
expect_eq "$(server_status s TERM)" 0 "exit status after SIGTERM"
ok qemu-io -c 'read -P 36 8M 64k' tgt3.qcow2
ok qemu-io -c 'read -P 0 8M 64k' src.qcow2

serve_bg s -t "$ctl" --mirror="$T/tgt4.qcow2" --on-complete=switch src.qcow2
wait_event s ready
ok imgtool job complete --stop "$ctl"
expect_eq "$(server_status s)" 0 "exit status after complete --stop"
grep -q '"event": "switched"' s.ev && die "complete --stop switched"
same_content src.qcow2 tgt4.qcow2

# An NBD target: the export goes on with the job's connection to the
# target's server.
ok qemu-img create -f qcow2 far.qcow2 16M
qnbd q -t -f qcow2 far.qcow2
serve_bg s -t "$ctl" --mirror="$(uri q)" --on-complete=switch src.qcow2
wait_event s ready
ok imgtool job complete "$ctl"
wait_event s switched
ok qemu-io -f raw -c 'write -P 37 9M 64k' "$(uri s)"
expect_eq "$(server_status s TERM)" 0 "exit status after SIGTERM"
stop q
ok qemu-io -c 'read -P 37 9M 64k' -c 'read -P 33 0 64k' -c 'read -P 7 1M 64k' -c 'read -P 7 2M 64k' -c 'read -P 7 3M 64k' far.qcow2
ok qemu-io -c 'read -P 0 9M 64k' src.qcow2
qemu_clean far.qcow2
passed
