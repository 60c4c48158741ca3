# Crash consistency of persistent bitmaps.  Each command runs again and
# again, killed (SIGKILL, through the IMGTOOL_FAULT_AFTER_WRITES test hook of
# formats/file.c) before its first write, its second, ... until it completes.
# After every kill, QEMU must find:
#   - for a multi-operation "imgtool bitmap" call (one transaction): either
#     the old set of bitmaps or the new one, with their dirty bits;
#   - for a session that writes guest data: either the bitmaps untouched (not
#     yet marked in use), or all of them marked in use (inconsistent), never
#     consistent-looking bitmaps that miss a write;
# and qemu-img check finds no corruption (leaked clusters are allowed; imgtool
# check agrees, and check -r leaks reclaims them).
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/bitmap-lib.sh"

# The bitmaps of IMG as QEMU sees them: the qemu-img info list, then the
# dirty extents of each bitmap.
state() {
    local list names
    list=$(qemu_bitmaps "$1")
    echo "$list"
    names=$(grep -o '"name":"[^"]*"' <<<"$list" | sed 's/"name":"\(.*\)"/\1/')
    for name in $names; do
        echo "$name: $(qemu_dirty "$1" "$name" | tr '\n' ' ')"
    done
}

# killed_at N ARGS...: run imgtool ARGS killed before its write N + 1 (if it
# gets that far); print its exit status (137 when killed).  The shell's
# "Killed" notice goes nowhere.
killed_at() {
    local n=$1
    shift
    (exec 2>/dev/null; IMGTOOL_FAULT_AFTER_WRITES=$n "$IMGTOOL" "$@" >/dev/null; echo $?)
}

# no_corruption IMG: qemu-img check exits 0 (clean) or 3 (leaks only), and
# imgtool check says the same.  Leaky images are kept as leaky.qcow2.
no_corruption() {
    local rc=0 mine=0
    qemu-img check "$1" >"$T/.check" 2>&1 || rc=$?
    checks=$((checks + 1))
    [ $rc = 0 ] || [ $rc = 3 ] || die "qemu-img check $1 exited $rc: $(cat "$T/.check")"
    "$IMGTOOL" check "$1" >/dev/null 2>&1 || mine=$?
    expect_eq "$mine" "$rc" "imgtool check exit status (qemu-img check: $rc)"
    [ $rc = 0 ] || cp "$1" leaky.qcow2
}

ok qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 64M
ok imgtool bitmap --add -g 512 base.qcow2 a
ok imgtool bitmap --add -g 4k base.qcow2 b
ok imgtool bitmap --add -g 64k --disabled base.qcow2 c
ok imgtool io -c 'write 0 3k' -c 'write -z 8M 2M' -c 'write 33M 1' -c 'discard 60M 64k' base.qcow2
ok qemu-io -f qcow2 -c 'write 40M 100k' base.qcow2
old=$(state base.qcow2)
expect_match "$old" '^\[\{"flags":\["auto"\],"name":"a","granularity":512\},'

# 1. A transaction of four operations on one bitmap, plus a second bitmap's
# data rewritten by the same store.
cp base.qcow2 want.qcow2
transaction=(bitmap --remove --add -g 64k --merge b --disable)
ok imgtool "${transaction[@]}" want.qcow2 a
new=$(state want.qcow2)
[ "$new" != "$old" ] || die "the transaction changed nothing"
expect_match "$new" '\{"flags":\[\],"name":"a","granularity":65536\}\]$'
saw_old=0 saw_new=0 n=0
while :; do
    cp base.qcow2 work.qcow2
    rc=$(killed_at $n "${transaction[@]}" work.qcow2 a)
    no_corruption work.qcow2
    now=$(state work.qcow2)
    if [ $rc = 0 ]; then
        expect_eq "$now" "$new" "bitmaps after the transaction completed"
        break
    fi
    expect_eq "$rc" 137 "exit status when killed before write $((n + 1))"
    if [ "$now" = "$old" ]; then
        saw_old=$((saw_old + 1))
    elif [ "$now" = "$new" ]; then
        saw_new=$((saw_new + 1))
    else
        die "killed before write $((n + 1)): neither the old nor the new bitmaps:
$now"
    fi
    n=$((n + 1))
    [ $n -lt 500 ] || die "the transaction never completed"
done
[ $saw_old -ge 3 ] && [ $saw_new -ge 1 ] ||
    die "expected kills on both sides of the switch, got $saw_old old and $saw_new new"
echo "transaction: killed at $n points, $saw_old left the old set, $saw_new the new one"

# check -r leaks reclaims what a kill leaked, and the bitmaps stay.
[ -e leaky.qcow2 ] || die "no kill left leaked clusters"
before=$(state leaky.qcow2)
ok imgtool check -r leaks leaky.qcow2
qemu_clean leaky.qcow2
expect_eq "$(state leaky.qcow2)" "$before" "bitmaps after check -r leaks"
rm leaky.qcow2

# 2. A session writing guest data: the bitmaps are marked in use before the
# first guest write and stored clean when it ends.
cp base.qcow2 want.qcow2
session=(io -c 'write -P 5 20M 20k' -c 'write -z 50M 1M' -c 'discard 0 1k')
ok imgtool "${session[@]}" want.qcow2
final=$(state want.qcow2)
[ "$final" != "$old" ] || die "the session changed no bitmap"
in_use='^\[\{"flags":\["in-use","auto"\],"name":"a","granularity":512\},\{"flags":\["in-use","auto"\],"name":"b","granularity":4096\},\{"flags":\["in-use"\],"name":"c","granularity":65536\}\]$'
untouched=0 inconsistent=0 stored=0 n=0
while :; do
    cp base.qcow2 work.qcow2
    rc=$(killed_at $n "${session[@]}" work.qcow2)
    no_corruption work.qcow2
    list=$(qemu_bitmaps work.qcow2)
    if [ $rc = 0 ]; then
        expect_eq "$(state work.qcow2)" "$final" "bitmaps after the session completed"
        break
    fi
    expect_eq "$rc" 137 "exit status when killed before write $((n + 1))"
    if grep -q in-use <<<"$list"; then
        expect_match "$list" "$in_use" "killed before write $((n + 1)): bitmaps"
        inconsistent=$((inconsistent + 1))
    else
        # Before the marking, or after the final store.
        now=$(state work.qcow2)
        if [ "$now" = "$old" ]; then
            untouched=$((untouched + 1))
        elif [ "$now" = "$final" ]; then
            stored=$((stored + 1))
        else
            die "killed before write $((n + 1)): bitmaps not in use and neither the old nor the final ones:
$now"
        fi
    fi
    n=$((n + 1))
    [ $n -lt 500 ] || die "the session never completed"
done
[ $untouched -ge 1 ] && [ $inconsistent -ge 3 ] && [ $stored -ge 1 ] ||
    die "expected kills before the marking, during the session and after the final store, got $untouched, $inconsistent and $stored"
echo "session: killed at $n points: $untouched before the marking, $inconsistent in the session, $stored after the final store"
passed
