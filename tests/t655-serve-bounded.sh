# A client that sends writes without reading the replies cannot make the
# server hold more than its bound: 50 pipelined writes of 8 MiB (400 MiB)
# leave the server's peak memory (VmHWM) far below that, since it stops
# reading the socket at 64 MiB in flight.  Then a client that breaks the
# protocol (a write longer than the 32 MiB maximum) is dropped with a
# message naming it, and the server goes on serving others.
. "$(dirname "$0")/serve-lib.sh"
[ -x /usr/bin/python3 ] || skip "needs /usr/bin/python3"
[ -r /proc/self/status ] || skip "needs /proc"

qemu-img create -q -f raw disk.raw 64M
"$IMGTOOL" serve -t --output=json -f raw -k "$T/s.sock" disk.raw > events 2>&1 &
spid=$!
echo $spid > "$T/s.pid"; servers+=("$T/s.pid")
for i in $(seq 500); do grep -q listening events && break; sleep 0.02; done

cat > flood.py <<'PY'
import socket, struct, sys
path, pid = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.recv(18, socket.MSG_WAITALL)
s.sendall(struct.pack('>I', 3))
s.sendall(struct.pack('>QII', 0x49484156454F5054, 7, 6) + b'\0\0\0\0\0\0')
while True:                                   # option replies up to the ACK
    magic, opt, typ, ln = struct.unpack('>QIII', s.recv(20, socket.MSG_WAITALL))
    s.recv(ln, socket.MSG_WAITALL)
    if typ == 1:
        break
N, LEN = 50, 8 << 20
data = b'\x5a' * LEN
import threading, time
def flood():
    for i in range(N):
        s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 1, i, (i % 8) * LEN, LEN) + data)
t = threading.Thread(target=flood)
t.start()
# Read no reply for a while: an unbounded server would take all 400 MiB
# meanwhile; a bounded one stops reading at its limit.
time.sleep(3)
hwm = [l for l in open('/proc/%s/status' % pid) if l.startswith('VmHWM')][0].split()[1]
errors = 0
for i in range(N):
    magic, err, cookie = struct.unpack('>IIQ', s.recv(16, socket.MSG_WAITALL))
    errors += err != 0
t.join()
s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 2, 0, 0, 0))
print("hwm_mib=%d errors=%d" % (int(hwm) // 1024, errors))
PY
ok /usr/bin/python3 flood.py "$T/s.sock" "$spid"
hwm=$(out | sed -n 's/^hwm_mib=\([0-9]*\) errors=0$/\1/p')
[ -n "$hwm" ] || die "flood: $(out)"
checks=$((checks + 1))
[ "$hwm" -lt 160 ] || die "server peak memory ${hwm} MiB with 400 MiB sent (bound: 64 MiB in flight)"

# A write above the maximum payload: the client is dropped, with a reason.
/usr/bin/python3 - "$T/s.sock" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.recv(18, socket.MSG_WAITALL)
s.sendall(struct.pack('>I', 3) + struct.pack('>QII', 0x49484156454F5054, 7, 6) + b'\0' * 6)
while True:
    magic, opt, typ, ln = struct.unpack('>QIII', s.recv(20, socket.MSG_WAITALL))
    s.recv(ln, socket.MSG_WAITALL)
    if typ == 1:
        break
s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 1, 1, 0, 64 << 20))
assert s.recv(16) == b''      # closed without a reply
PY
[ $? = 0 ] || die "an oversized write did not get the client dropped"
for i in $(seq 500); do grep -q "limit" events && break; sleep 0.02; done
expect_match "$(cat events)" '"error": "unix socket: write of 67108864 bytes \(limit 33554432\)"' "drop event"
ok qemu-io -f raw -c "read -P 0x5a 0 8M" "$(uri s)"
kill -TERM $spid; status=0; wait $spid || status=$?
expect_eq "$status" 0 "exit status"
passed
