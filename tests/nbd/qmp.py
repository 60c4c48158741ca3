#!/usr/bin/env python3
# Run QMP commands against a qemu-storage-daemon, for the t6xx tests:
#   qmp.py SOCKET '{"execute": ..., "arguments": ...}' ...
# Each command's "return" is printed as one JSON line; an error exits 1
# with its description.  Events are skipped.
import json, socket, sys, time

s = socket.socket(socket.AF_UNIX)
for _ in range(300):
    try:
        s.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit("cannot connect to %s" % sys.argv[1])
f = s.makefile('rw')

def call(msg):
    f.write(json.dumps(msg) + "\n")
    f.flush()
    while True:
        line = f.readline()
        if not line:
            sys.exit("qemu-storage-daemon closed the connection")
        r = json.loads(line)
        if "event" in r:
            continue
        if "error" in r:
            sys.exit("%s: %s" % (msg.get("execute"), r["error"]["desc"]))
        return r.get("return")

f.readline()
call({"execute": "qmp_capabilities"})
for cmd in sys.argv[2:]:
    print(json.dumps(call(json.loads(cmd)), sort_keys=True))
