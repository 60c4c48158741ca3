# A power failure at any moment of a resize leaves the old size or the new
# one, with every kept byte intact and the grown area reading zeroes (issue
# 12 item 3), under the power-loss harness (tests/crash/README): only the
# writes a flush made durable plus a random subset of the later ones
# survive.  t043 kills the process at every write, which keeps every write
# that was issued; this also catches a resize whose flushes are in the
# wrong order (the new size durable before the zeroes that hide the
# backing file's data past the old end).  qcow2 overlays over a larger
# backing file (grow, with a new L1 table, extended L2), a plain qcow2
# (shrink), raw (grow and shrink).  In every crash state qemu-img check
# finds no corruption (leaks are allowed).
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/crash-lib.sh"
need qemu-img qemu-io

ok qemu-img create -q -f raw "$T/base.raw" 4M
ok qemu-io -f raw -c 'write -P 0x11 0 4M' "$T/base.raw"

hdr_size() { od -An -tu8 --endian=big -j24 -N8 "$1" | tr -d ' '; }
image_size() {
    if [ "$fmt" = raw ]; then stat -c %s "$1"; else hdr_size "$1"; fi
}

# check_state: old or new size; below both, the old bytes; past the old
# size, zeroes.
check_state() {
    local img=$S/img size
    [ "$fmt" = raw ] || crash_fs_check "$img"
    size=$(image_size "$img")
    checks=$((checks + 1))
    [ "$size" = "$old" ] || [ "$size" = "$new" ] || die "$crash_where: size $size"
    qemu-img convert -U -f "$fmt" -O raw "$img" "$T/state.raw" ||
        die "$crash_where: cannot read the image"
    checks=$((checks + 1))
    cmp -s -n $((new < old ? new : old)) "$T/old.raw" "$T/state.raw" ||
        die "$crash_where: kept bytes changed"
    if [ "$size" -gt "$old" ]; then
        checks=$((checks + 1))
        cmp -s -i "$old:0" -n $((size - old)) "$T/state.raw" /dev/zero ||
            die "$crash_where: the grown area does not read zeroes" \
                "($(cmp -i "$old:0" -n $((size - old)) "$T/state.raw" /dev/zero 2>&1 | head -c 200))"
    fi
}

# powerloss NAME FORMAT NEW-SIZE POINTS SEEDS [--shrink]: resize $D/img
# (prepared by the caller) under the harness and check the crash states of
# up to POINTS crash points with SEEDS random choices each.
powerloss() {
    local name=$1 points=$4 seeds=$5
    fmt=$2 new=$3
    shift 5
    old=$(image_size "$D/img")
    ok qemu-img convert -U -f "$fmt" -O raw "$D/img" "$T/old.raw"
    ok crash_run "$name" "$IMGTOOL" resize -q -f "$fmt" "$@" "$D/img" "$new"
    expect_eq "$(image_size "$D/img")" "$new" "$name: size after the resize"
    crash_states "$name" "$points" "$seeds" check_state
}
overlay() {    # OPTIONS SIZE: a qcow2 over base.raw with some data of its own
    rm -f "$D/img"
    ok qemu-img create -q -f qcow2 -o "$1" -b "$T/base.raw" -F raw "$D/img" "$2"
    ok qemu-io -f qcow2 -c 'write -P 0x33 4096 8k' "$D/img"
}

overlay cluster_size=4096 1000448
# Every crash point, three choices each: the window where the new size may
# be durable before the zero entries is a single point.
powerloss grow-4k qcow2 3145728 40 3
overlay cluster_size=512 2031616
powerloss grow-new-l1 qcow2 2162688 20 1
overlay cluster_size=65536,extended_l2=on 1000448
powerloss grow-extl2 qcow2 3145728 20 1
rm -f "$D/img"
ok qemu-img create -q -f qcow2 -o cluster_size=4096 "$D/img" 3145728
ok qemu-io -f qcow2 -c 'write -P 0x44 0 3145728' "$D/img"
powerloss shrink-qcow2 qcow2 1000448 12 1 --shrink
rm -f "$D/img"
ok qemu-img create -q -f raw "$D/img" 1000448
ok qemu-io -f raw -c 'write -P 0x55 0 1000448' "$D/img"
powerloss grow-raw raw 3145728 6 1
powerloss shrink-raw raw 65536 6 1 --shrink
echo "$crash_states_checked crash states"
passed
