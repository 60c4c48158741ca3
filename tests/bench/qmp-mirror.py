#!/usr/bin/env python3
"""Drive a live mirror over QMP for make bench, the same way for
qemu-storage-daemon and for imgtool serve --control.

usage: qmp-mirror.py SOCKET [--start JSON] [--quit] [--pid PID] [-- WRITER...]

Connects to the QMP socket; with --start, sends that command (qsd's
blockdev-mirror) and waits for its reply; starts the writer, if any (a
command line that writes into the served disk over NBD); waits until the
writer has exited and the job is READY; completes the job and waits for
BLOCK_JOB_COMPLETED.  With --pid, prints the server's VmHWM (kB) read just
before the completion.  With --quit, asks the server to quit.  Exits non-zero
if the job fails or the writer does."""
import json
import socket
import subprocess
import sys
import time


def connect(path):
    for _ in range(500):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        except OSError:
            time.sleep(0.01)
    sys.exit("cannot connect to %s" % path)


def main():
    args = sys.argv[1:]
    writer = []
    if "--" in args:
        writer = args[args.index("--") + 1:]
        args = args[:args.index("--")]
    path, start, quit_, pid = args[0], None, False, None
    i = 1
    while i < len(args):
        if args[i] == "--start":
            start = json.loads(args[i + 1]); i += 2
        elif args[i] == "--pid":
            pid = args[i + 1]; i += 2
        elif args[i] == "--quit":
            quit_ = True; i += 1
        else:
            sys.exit("unknown argument %s" % args[i])
    f = connect(path).makefile('rw')
    state = {"ready": False, "done": None}

    def send(cmd, arguments=None):
        msg = {"execute": cmd}
        if arguments is not None:
            msg["arguments"] = arguments
        f.write(json.dumps(msg) + "\n")
        f.flush()

    def handle(msg):
        ev = msg.get("event")
        if ev == "BLOCK_JOB_READY":
            state["ready"] = True
        elif ev in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            state["done"] = msg

    def reply():
        while True:
            line = f.readline()
            if not line:
                sys.exit("the server closed the connection")
            msg = json.loads(line)
            if "error" in msg:
                sys.exit("QMP error: %s" % msg["error"]["desc"])
            if "return" in msg:
                return msg["return"]
            handle(msg)

    f.readline()                # greeting
    send("qmp_capabilities")
    reply()
    if start:
        send(start["execute"], start.get("arguments"))
        reply()
    proc = subprocess.Popen(writer) if writer else None
    # READY may have come before we connected: ask, then wait for events.
    send("query-block-jobs")
    jobs = reply()
    if not jobs:
        sys.exit("no block job")
    job = jobs[0]["device"]
    state["ready"] = state["ready"] or jobs[0]["ready"]
    if proc and proc.wait() != 0:
        sys.exit("the writer failed")
    while not state["ready"]:
        line = f.readline()
        if not line:
            sys.exit("the server closed the connection before READY")
        handle(json.loads(line))
    if pid:
        for l in open("/proc/%s/status" % pid):
            if l.startswith("VmHWM:"):
                print(l.split()[1])
    send("block-job-complete", {"device": job})
    reply()
    while not state["done"]:
        line = f.readline()
        if not line:
            sys.exit("the server closed the connection before the job completed")
        handle(json.loads(line))
    if state["done"]["event"] != "BLOCK_JOB_COMPLETED" or state["done"]["data"].get("error"):
        sys.exit("job did not complete: %s" % state["done"])
    if quit_:
        send("quit")
        try:
            while f.readline():
                pass
        except ConnectionResetError:
            pass


main()
