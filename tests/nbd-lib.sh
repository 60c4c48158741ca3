# NBD servers for the t6xx tests, after lib.sh.  Servers run in the
# background and are killed when the test exits; start_* returns once the
# server answers (polled with nbdinfo, no fixed sleeps).
NBD_PIDS=()
nbd_cleanup() {
    local p
    for p in "${NBD_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${NBD_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap nbd_cleanup EXIT
need nbdinfo

# wait_nbd URI: until the server answers a handshake (at most ~20 s).
wait_nbd() {
    local i
    for i in $(seq 200); do
        nbdinfo --size "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "NBD server at $1 did not come up"
}
# unix_uri SOCKET [EXPORT]
unix_uri() { echo "nbd+unix:///${2:-}?socket=$1"; }
# free_port: a TCP port on 127.0.0.1 that nobody listens on now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# start_qemu_nbd SOCKET ARGS...: a persistent qemu-nbd on a unix socket;
# sets NBD_URI.
start_qemu_nbd() {
    local sock=$1; shift
    qemu-nbd -t -k "$T/$sock" "$@" >"$T/$sock.log" 2>&1 &
    NBD_PIDS+=($!)
    NBD_URI=$(unix_uri "$T/$sock" "$(export_arg "$@")")
    wait_nbd "$NBD_URI"
}
# start_qemu_nbd_tcp ARGS...: qemu-nbd on 127.0.0.1; sets NBD_URI.
start_qemu_nbd_tcp() {
    local port; port=$(free_port)
    qemu-nbd -t -b 127.0.0.1 -p "$port" "$@" >"$T/tcp-$port.log" 2>&1 &
    NBD_PIDS+=($!)
    NBD_URI="nbd://127.0.0.1:$port/$(export_arg "$@")"
    wait_nbd "$NBD_URI"
}
# The -x NAME among qemu-nbd arguments.
export_arg() {
    while [ $# -gt 0 ]; do
        [ "$1" = -x ] && { echo "$2"; return; }
        shift
    done
}
# start_nbdkit SOCKET ARGS...: nbdkit on a unix socket; sets NBD_URI and
# NBD_PID (the server's pid, to kill it mid-copy).
start_nbdkit() {
    local sock=$1; shift
    need nbdkit
    nbdkit -f --exit-with-parent -U "$T/$sock" "$@" >"$T/$sock.log" 2>&1 &
    NBD_PID=$!
    NBD_PIDS+=($NBD_PID)
    NBD_URI=$(unix_uri "$T/$sock")
    wait_nbd "$NBD_URI"
}
