# Helpers for the imgtool serve --mirror tests (t660-t679): a server in the
# background (not --fork: the tests want its exit status), its JSON events
# in $T/NAME.ev, and seeded writers.
. "$(dirname "${BASH_SOURCE[0]}")/serve-lib.sh"

# serve_bg NAME ARGS...: imgtool serve -k $T/NAME.sock --output=json ARGS,
# in the background; returns once it listens (or dies if it exited).
serve_bg() {
    local name=$1; shift
    rm -f "$T/$name.sock" "$T/$name.ev" "$T/$name.rc"
    ( "$IMGTOOL" serve -k "$T/$name.sock" --output=json --pid-file "$T/$name.pid" "$@" \
        >"$T/$name.ev" 2>"$T/$name.err"; echo $? >"$T/$name.rc" ) &
    servers+=("$T/$name.pid")
    wait_event "$name" listening
}
# wait_event NAME EVENT: until the server printed {"event": "EVENT", ...}
# (at most ~90 s: a hang guard only; the shared CI machine can be slow,
# a target's fdatasync included).
wait_event() {
    local i
    for i in $(seq 4500); do
        grep -q "^{\"event\": \"$2\"" "$T/$1.ev" 2>/dev/null && return 0
        [ -s "$T/$1.rc" ] && die "server $1 exited ($(cat "$T/$1.rc")) before '$2': $(cat "$T/$1.ev" "$T/$1.err")"
        sleep 0.02
    done
    die "server $1 printed no '$2' event: $(cat "$T/$1.ev" "$T/$1.err")"
}
# server_status NAME [SIGNAL]: signal it (unless no signal is given) and
# print its exit status once it is gone.
server_status() {
    [ -n "${2:-}" ] && kill "-$2" "$(cat "$T/$1.pid")"
    local i
    for i in $(seq 1500); do
        [ -s "$T/$1.rc" ] && { cat "$T/$1.rc"; return 0; }
        sleep 0.02
    done
    die "server $1 did not exit: $(cat "$T/$1.ev" "$T/$1.err")"
}
# event_field NAME EVENT FIELD: the number FIELD of the last EVENT line.
event_field() {
    grep "^{\"event\": \"$2\"" "$T/$1.ev" | tail -1 | sed -n "s/.*\"$3\": \([0-9]*\).*/\1/p"
}
# writer_script SEED COUNT SIZE: qemu-io commands, a seeded mix of aligned
# and unaligned writes and zero writes inside [0, SIZE).
writer_script() {
    awk -v seed="$1" -v n="$2" -v size="$3" 'BEGIN {
        srand(seed)
        for (i = 0; i < n; i++) {
            r = rand()
            if (r < 0.5) { len = (1 + int(rand() * 32)) * 4096; off = int(rand() * (size - len) / 4096) * 4096 }
            else { len = 1 + int(rand() * 70000); off = int(rand() * (size - len)) }
            if (rand() < 0.2) printf "write -z %d %d\n", off, len
            else printf "write -P %d %d %d\n", 1 + int(rand() * 254), off, len
        }
    }'
}
