# imgtool serve --fork forks before it opens anything: an NBD source (whose
# client has threads, lost by a fork made after opening it) is served, a
# --mirror job (a thread too) runs in the forked server, and a failure in
# the child (an image that does not exist) is the parent's exit status
# and message, once the child gave up.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/serve-mirror-lib.sh"
. "$here/nbd-lib.sh"
trap 'stop_all_servers; nbd_cleanup' EXIT
need timeout

qemu-img create -q -f raw disk.raw 4M
qemu-io -f raw -c "write -P 5 0 1M" disk.raw >/dev/null
start_qemu_nbd q.sock -f raw disk.raw

# 1. An NBD source, re-exported (reads and writes pass through).
timeout 20 "$IMGTOOL" serve --fork --pid-file "$T/s.pid" -k "$T/s.sock" "$NBD_URI" ||
    die "serve --fork of an NBD source did not return 0 (status $?)"
servers+=("$T/s.pid")
ok timeout 20 qemu-io -f raw -c "read -P 5 0 1M" -c "write -P 6 1M 64k" "$(uri s)"
ok timeout 20 qemu-io -f raw -r -c "read -P 6 1M 64k" "$NBD_URI"
stop s

# 2. A mirror in a forked server.
qemu-img create -q -f qcow2 src.qcow2 4M
qemu-io -c "write -P 7 0 2M" src.qcow2 >/dev/null
timeout 20 "$IMGTOOL" serve --fork --pid-file "$T/m.pid" -k "$T/m.sock" -t --output=json \
    --mirror=dst.qcow2 --copy-mode=write-blocking src.qcow2 > "$T/m.ev" ||
    die "serve --fork --mirror failed"
servers+=("$T/m.pid")
ok timeout 20 qemu-io -f raw -c "write -P 8 3M 64k" "$(uri m)"
wait_event m ready
stop m
wait_event m completed
ok qemu-img compare -f qcow2 -F qcow2 src.qcow2 dst.qcow2

# 3. The child fails: its status and message reach the caller.
expect_status 1 timeout 20 "$IMGTOOL" serve --fork -k "$T/x.sock" missing.qcow2
expect_match "$(err)" "missing.qcow2" "the error does not name the image:"
passed
