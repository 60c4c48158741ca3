# Shared helpers for the end-to-end tests.  Source it first:
#   . "$(dirname "$0")/lib.sh"
# Each test runs in its own temporary directory ($T), removed at exit, and
# stops at the first failed check (set -e semantics via `die`).
set -u
: "${IMGTOOL:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/imgtool}"
T=$(mktemp -d "${TMPDIR:-/tmp}/imgtool-test.XXXXXX")
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
checks=0

die() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "$*"; exit 77; }
need() { for c in "$@"; do command -v "$c" >/dev/null || skip "needs $c"; done; }

imgtool() { "$IMGTOOL" "$@"; }

# expect_status N CMD...: run CMD, require exit status N.
expect_status() {
    local want=$1; shift
    local got=0
    "$@" >"$T/.out" 2>"$T/.err" || got=$?
    checks=$((checks + 1))
    [ "$got" = "$want" ] || { cat "$T/.out" "$T/.err" >&2; die "'$*' exited $got, expected $want"; }
}
# ok CMD...: CMD must succeed.
ok() { expect_status 0 "$@"; }
# expect_eq ACTUAL EXPECTED [what]
expect_eq() {
    checks=$((checks + 1))
    [ "$1" = "$2" ] || die "${3:-value}: got '$1', expected '$2'"
}
# expect_match TEXT REGEX [what]
expect_match() {
    checks=$((checks + 1))
    grep -Eq -- "$2" <<<"$1" || die "${3:-output} '$1' does not match /$2/"
}
# Output of the last expect_status/ok call.
out() { cat "$T/.out"; }
err() { cat "$T/.err"; }

# same_content A B: qemu-img compare says identical.
same_content() {
    checks=$((checks + 1))
    qemu-img compare -U "$@" >/dev/null 2>"$T/.cmp" || die "qemu-img compare $*: $(cat "$T/.cmp") differ"
}
# qemu_clean IMG: qemu-img check finds no errors and no leaks.
qemu_clean() {
    checks=$((checks + 1))
    local o; o=$(qemu-img check -U "$1" 2>&1) || die "qemu-img check $1: $o"
}
# map_alloc FMT IMG: qemu-img map of IMG as "start length zero data" runs,
# host offsets left out and adjacent runs alike merged (allocation only).
map_alloc() {
    qemu-img map -U -f "$1" --output=json "$2" |
        sed -n 's/.*"start": \([0-9]*\), "length": \([0-9]*\),.*"zero": \([a-z]*\), "data": \([a-z]*\).*/\1 \2 \3 \4/p' |
        awk '$3 == z && $4 == d { len += $2; next }
             NR > 1 { print start, len, z, d } { start = $1; len = $2; z = $3; d = $4 }
             END { print start, len, z, d }'
}
passed() { echo "PASS ($checks checks)"; exit 0; }

# replay_inputs BINS: run each fuzz replay program of BINS over inputs/,
# one run per group of inputs (names that differ only in a trailing
# number); every run must exit 0 within 120 s, and there must be at least
# 100 inputs.
replay_inputs() {
    local count group bin rc
    count=$(ls inputs | wc -l)
    for group in $(ls inputs | sed 's/[0-9]*$//' | sort -u); do
        for bin in $1; do
            timeout 120 "$bin" inputs/"$group"* >/dev/null 2>"$T/replay.err"
            rc=$?
            [ $rc = 0 ] || die "$(basename "$bin") crashed or hung on inputs/$group* (exit $rc): $(head -c 2000 "$T/replay.err")"
        done
    done
    checks=$((checks + count))
    expect_match "$count" '^[0-9]{3,}$' "number of inputs"
}
