#!/usr/bin/env python3
"""Run one block job in a qemu-storage-daemon and wait for it, for make bench.

usage: qmp-job.py SOCKET COMMAND JSON-ARGUMENTS

Connects to the QMP socket of a running qemu-storage-daemon, starts the job
(blockdev-mirror or blockdev-backup), completes a mirror when it is ready,
waits for BLOCK_JOB_COMPLETED and asks the daemon to quit.  Exits non-zero
if the job fails."""
import json
import socket
import sys
import time


def main():
    path, command, arguments = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    for _ in range(200):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            break
        except OSError:
            time.sleep(0.01)
    else:
        sys.exit("cannot connect to %s" % path)
    f = s.makefile('rw')

    def send(cmd, args=None):
        msg = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        f.write(json.dumps(msg) + "\n")
        f.flush()

    def read():
        line = f.readline()
        if not line:
            sys.exit("qemu-storage-daemon closed the connection")
        return json.loads(line)

    read()                      # greeting
    send("qmp_capabilities")
    read()
    send(command, arguments)
    job = arguments["job-id"]
    while True:
        msg = read()
        if "error" in msg:
            sys.exit("%s: %s" % (command, msg["error"]["desc"]))
        ev = msg.get("event")
        if ev == "BLOCK_JOB_READY":
            send("block-job-complete", {"device": job})
        elif ev == "BLOCK_JOB_COMPLETED":
            if msg["data"].get("error"):
                sys.exit("job failed: %s" % msg["data"]["error"])
            break
    send("quit")
    # Read until the daemon closes the connection: closing first could drop
    # the quit command.
    try:
        while f.readline():
            pass
    except ConnectionResetError:
        pass


main()
