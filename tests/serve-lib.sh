# Helpers for the imgtool serve tests (t650-t699): servers started with
# --fork (they return once listening, so no test waits or sleeps), their
# pids in files, every one killed at exit.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need qemu-img qemu-io qemu-nbd nbdinfo

servers=()
stop_all_servers() {
    local p
    for p in "${servers[@]}"; do
        [ -s "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null
    done
    servers=()
}
trap 'stop_all_servers; rm -rf "$T"' EXIT

# serve NAME ARGS...: imgtool serve on socket $T/NAME.sock (pid in
# $T/NAME.pid); the URI of its default export is then $(uri NAME).
serve() {
    local name=$1; shift
    rm -f "$T/$name.sock"
    "$IMGTOOL" serve --fork --pid-file "$T/$name.pid" -k "$T/$name.sock" "$@" \
        || die "imgtool serve $* did not start"
    servers+=("$T/$name.pid")
}
# qnbd NAME ARGS...: the same with qemu-nbd.
qnbd() {
    local name=$1; shift
    rm -f "$T/$name.sock"
    qemu-nbd --fork --pid-file "$T/$name.pid" -k "$T/$name.sock" "$@" \
        || die "qemu-nbd $* did not start"
    servers+=("$T/$name.pid")
}
# qsd_start SRC TGT: qemu-storage-daemon with the qcow2 images as nodes
# "src" and "tgt", its QMP monitor on $T/qmp.sock, killed at exit like
# the servers.
qsd_start() {
    rm -f "$T/qmp.sock"
    qemu-storage-daemon \
        --blockdev driver=file,filename="$1",node-name=sf --blockdev driver=qcow2,file=sf,node-name=src \
        --blockdev driver=file,filename="$2",node-name=tf --blockdev driver=qcow2,file=tf,node-name=tgt \
        --chardev socket,path="$T/qmp.sock",server=on,wait=off,id=m --monitor chardev=m \
        --pidfile "$T/qsd.pid" --daemonize || die "qemu-storage-daemon did not start"
    servers+=("$T/qsd.pid")
}
uri() { echo "nbd+unix:///${2:-}?socket=$T/$1.sock"; }
# stop NAME [SIGNAL]: signal the server and wait until it is gone; the
# exit status is not ours to see (it forked), so tests check the results.
stop() {
    local pid; pid=$(cat "$T/$1.pid")
    kill "-${2:-TERM}" "$pid" 2>/dev/null
    local i
    for i in $(seq 500); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.02
    done
    die "server $1 (pid $pid) did not stop"
}
