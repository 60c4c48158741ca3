# The power-loss harness for end-to-end tests (tests/crash/README), sourced
# after lib.sh (and bitmap-lib.sh, whose imgtool_dirty it uses):
#   crash_run NAME CMD...       run CMD with every change to the files of
#                               $D logged into $T/NAME.log, after copying
#                               $D to $T/NAME.snap; returns CMD's status
#   crash_states NAME MAX SEEDS FUNC
#                               for up to MAX crash points of the log and
#                               SEEDS random choices each, build the crash
#                               state in $S (a fresh directory holding the
#                               files of $D as the power failure left them)
#                               and call FUNC (which dies on a violation;
#                               $crash_where names the state)
#   crash_fs_check IMG          qemu-img check finds no corruption (leaked
#                               clusters are allowed after a crash)
#   crash_covered SRC BITMAP RESTORED [WANT]
#                               every byte where RESTORED (an image, the
#                               chain a restore would read) differs from
#                               WANT (a raw file; default: SRC's data now;
#                               a RESTORED named *.raw is read as raw)
#                               is dirty in SRC's BITMAP (imgtool's reading)
: "${CRASH_TOOLS:=$(cd "$(dirname "$(readlink -f "$IMGTOOL")")/../crash" 2>/dev/null && pwd)}"
[ -x "${CRASH_TOOLS:-}/crashreplay" ] && [ -e "$CRASH_TOOLS/writelog.so" ] ||
    die "the power-loss harness is not built (make crash-tools)"
D=$T/d
S=$T/state
mkdir -p "$D"
crash_states_checked=0

crash_run() {
    local name=$1
    shift
    rm -rf "$T/$name.snap" "$T/$name.log"
    cp -a --sparse=always "$D" "$T/$name.snap"
    # A sanitizer build must accept a library preloaded before its runtime.
    WRITELOG=$T/$name.log WRITELOG_DIR=$D LD_PRELOAD=$CRASH_TOOLS/writelog.so \
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 "$@"
}

crash_states() {
    local name=$1 max=$2 seeds=$3 fn=$4 point seed
    [ -s "$T/$name.log" ] || die "$name: the write log is empty"
    for point in $("$CRASH_TOOLS/crashreplay" points "$T/$name.log" "$max"); do
        for seed in $(seq 1 "$seeds"); do
            crash_where="$name: crash after record $point, seed $seed"
            rm -rf "$S"
            mkdir "$S"
            "$CRASH_TOOLS/crashreplay" state "$T/$name.log" "$T/$name.snap" "$S" "$point" "$seed" ||
                die "$crash_where: crashreplay failed"
            "$fn"
            crash_states_checked=$((crash_states_checked + 1))
        done
    done
}

crash_fs_check() {
    local rc=0
    qemu-img check "$1" >"$T/.check" 2>&1 || rc=$?
    checks=$((checks + 1))
    [ $rc = 0 ] || [ $rc = 3 ] || die "$crash_where: qemu-img check $1 exited $rc: $(cat "$T/.check")"
}

crash_covered() {
    local src=$1 bitmap=$2 restored=$3 want=${4:-}
    if [ -z "$want" ]; then
        want=$T/.want.raw
        qemu-img convert -U -O raw "$src" "$want" || die "$crash_where: cannot read $src"
    fi
    local raw=$restored
    if [ "${restored%.raw}" = "$restored" ]; then    # not a raw file: read the chain
        raw=$T/.restored.raw
        qemu-img convert -U -O raw "$restored" "$raw" || die "$crash_where: cannot read $restored"
    fi
    imgtool_dirty "$src" "$bitmap" >"$T/.dirty"
    checks=$((checks + 1))
    "$CRASH_TOOLS/crashreplay" uncovered "$want" "$raw" "$T/.dirty" >"$T/.lost" ||
        die "$crash_where: $restored differs from the source where bitmap $bitmap is clean" \
            "(lost changes, START LENGTH: $(head -n 5 "$T/.lost" | paste -sd ' '))"
}
