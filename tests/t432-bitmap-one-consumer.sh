# One bitmap per consumer (issue 12 item 9): a mirror that would clear the
# bitmap an export chain counts on is refused (exit 1, no target, bitmap
# unchanged), since the next incremental backup would then miss the
# changes it took and still exit 0; --force lets the mirror go on and
# drops the chain's record, so that the next incremental is refused
# instead of incomplete.  imgtool bitmap --add/--remove/--clear drop it
# too.  A mirror with a bitmap of its own keeps a replica up to date and
# leaves the export chain intact.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/export-lib.sh"

full_then_mon
ok qemu-io -c 'write -P 3 1M 64k' vm.qcow2
before=$(imgtool bitmap --dump --output=json vm.qcow2 n | tr -d ' \n')

for sync in incremental bitmap; do
    expect_status 1 imgtool mirror --sync=$sync --bitmap=n vm.qcow2 diff.qcow2
    expect_eq "$(err)" "imgtool: vm.qcow2: bitmap 'n' tracks the changes since backup $T/mon.qcow2 for the next incremental export, which would miss what this job clears; give this job a bitmap of its own, or --bitmap-mode=never (or --force)" "mirror --sync=$sync refused"
    [ ! -e diff.qcow2 ] || die "a refused mirror created diff.qcow2"
    ls -a | grep -q imgtool-tmp && die "a refused mirror left $(ls -a | grep imgtool-tmp)"
done
ok imgtool create -q -f qcow2 existing.qcow2 4M
sum=$(md5sum < existing.qcow2)
expect_status 1 imgtool mirror --sync=bitmap --bitmap-mode=always --bitmap=n vm.qcow2 existing.qcow2
expect_eq "$(md5sum < existing.qcow2)" "$sum" "an existing target after a refused mirror"
expect_eq "$(imgtool bitmap --dump --output=json vm.qcow2 n | tr -d ' \n')" "$before" "bitmap after the refusals"
# A mirror that leaves the bitmap alone is no second consumer.
ok imgtool mirror -q --sync=bitmap --bitmap-mode=never --bitmap=n vm.qcow2 peek.qcow2
expect_eq "$(imgtool bitmap --dump --output=json vm.qcow2 n | tr -d ' \n')" "$before" "bitmap after --bitmap-mode=never"

# A replica with its own bitmap: a full mirror, then the changes.
ok imgtool bitmap --add vm.qcow2 replica
ok imgtool mirror -q vm.qcow2 replica.qcow2
ok qemu-io -c 'write -P 4 2M 64k' vm.qcow2
ok imgtool mirror -q --sync=incremental --bitmap=replica vm.qcow2 replica.qcow2
same_content vm.qcow2 replica.qcow2
# ... and the export chain still has every change since mon.
ok qemu-img convert -U -O raw vm.qcow2 tue.raw
ok imgtool export --output=json -s incremental -B n -b mon.qcow2 vm.qcow2 tue.qcow2
expect_match "$(out)" '"bytes-written": 131072,'
same_content -F raw tue.qcow2 tue.raw

# --force: the mirror takes the changes, and the chain is known broken.
ok qemu-io -c 'write -P 5 3M 64k' vm.qcow2
ok imgtool mirror -q --force --sync=incremental --bitmap=n vm.qcow2 stolen.qcow2
expect_status 1 imgtool export -s incremental -B n -b tue.qcow2 vm.qcow2 wed.qcow2
expect_eq "$(err)" "imgtool: vm.qcow2: bitmap 'n' has no backup record (no imgtool export started it, or another job cleared it since): take a full backup (or --force)"
[ ! -e wed.qcow2 ] || die "a refused export created wed.qcow2"
expect_status 1 imgtool bitmap --last-backup vm.qcow2 n
qemu_clean vm.qcow2

# imgtool bitmap --clear, --remove then --add: the record goes with them.
for ops in "--clear" "--remove --add"; do
    ok imgtool export -q -B n vm.qcow2 f.qcow2
    ok qemu-io -c 'write -P 6 0 4k' vm.qcow2
    # shellcheck disable=SC2086
    ok imgtool bitmap $ops vm.qcow2 n
    expect_status 1 imgtool export -s incremental -B n -b f.qcow2 vm.qcow2 x.qcow2
    expect_match "$(err)" "^imgtool: vm.qcow2: bitmap 'n' has no backup record "
    rm f.qcow2
done
# Operations on another bitmap leave the chain's record alone.
ok imgtool export -q -B n vm.qcow2 f.qcow2
ok imgtool bitmap --clear vm.qcow2 replica
expect_eq "$(imgtool bitmap --last-backup vm.qcow2 n)" "$T/f.qcow2" "record after clearing another bitmap"
passed
