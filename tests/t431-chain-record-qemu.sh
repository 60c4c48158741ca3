# The backup chain record survives QEMU handling the files (issue 12 item
# 1): it is a compatible qcow2 header extension, which qemu-img 7.2 keeps
# when it rewrites a header (amend, rebase, resize, snapshot, bitmap,
# commit, check -r) and which a VM's writes keep; qemu-img check stays
# clean.  qemu-img convert writes a new file without it: a converted disk
# or backup is then refused until a full backup (or --force).
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/export-lib.sh"

full_then_mon
last() { expect_eq "$(imgtool bitmap --last-backup vm.qcow2 n)" "$T/mon.qcow2" "record after $1"; }

# The disk: a VM's writes, and qemu-img's header rewrites.
ok qemu-io -c 'write -P 3 1M 64k' vm.qcow2;                 last "qemu-io write"
ok qemu-img amend -o lazy_refcounts=on vm.qcow2;             last "amend lazy_refcounts=on"
ok qemu-io -c 'write -P 4 2M 4k' vm.qcow2;                  last "a write with lazy refcounts"
ok qemu-img amend -o lazy_refcounts=off vm.qcow2;            last "amend lazy_refcounts=off"
ok qemu-img snapshot -c snap vm.qcow2;                       last "snapshot -c"
ok qemu-img snapshot -d snap vm.qcow2;                       last "snapshot -d"
ok qemu-img bitmap --add vm.qcow2 other;                     last "bitmap --add"
ok qemu-img bitmap --remove vm.qcow2 other;                  last "bitmap --remove"
ok qemu-img check -q -r all vm.qcow2;                        last "check -r all"
# Writes committed from an overlay into the disk are recorded by its bitmap.
ok qemu-img create -q -f qcow2 -b vm.qcow2 -F qcow2 overlay.qcow2
ok qemu-io -c 'write -P 5 3M 64k' overlay.qcow2
ok qemu-img commit -q overlay.qcow2;                         last "commit into the disk"
qemu_clean vm.qcow2

# The backup: rewritten by qemu-img in the ways an administrator might.
ok qemu-img amend -o lazy_refcounts=on mon.qcow2
ok qemu-img rebase -u -b full.qcow2 -F qcow2 mon.qcow2
ok qemu-img bitmap --add mon.qcow2 x
ok qemu-img check -q -r all mon.qcow2
qemu_clean mon.qcow2
ok qemu-img convert -U -O raw vm.qcow2 tue.raw
ok imgtool export -q -s incremental -B n -b mon.qcow2 vm.qcow2 tue.qcow2
same_content -F raw tue.qcow2 tue.raw
qemu_clean tue.qcow2
# ... and the wrong predecessor is still known to be wrong.
expect_status 1 imgtool export -s incremental -B n -b mon.qcow2 vm.qcow2 x.qcow2
expect_match "$(err)" "^imgtool: mon.qcow2: not the last backup; bitmap 'n' of vm.qcow2 counts from $T/tue.qcow2: "

# A compat=0.10 round trip of a backup keeps it too.
ok qemu-img amend -o compat=0.10 full.qcow2
ok qemu-img amend -o compat=1.1 full.qcow2
qemu_clean full.qcow2
ok imgtool export -q -B n2 vm.qcow2 full2.qcow2
ok qemu-img amend -o compat=0.10 full2.qcow2
ok qemu-io -c 'write -P 6 0 4k' vm.qcow2
ok imgtool export -q -s differential -B n2 -b full2.qcow2 vm.qcow2 diff2.qcow2

# convert makes a new disk: its bitmap (copied by --bitmaps) has no record.
ok qemu-img convert --bitmaps -O qcow2 vm.qcow2 vmcopy.qcow2
expect_status 1 imgtool bitmap --last-backup vmcopy.qcow2 n
expect_status 1 imgtool export -s incremental -B n -b tue.qcow2 vmcopy.qcow2 x.qcow2
expect_match "$(err)" "^imgtool: vmcopy.qcow2: bitmap 'n' has no backup record"
[ ! -e x.qcow2 ] || die "a refused export created x.qcow2"
# Resize keeps the record (the size check then refuses the chain).
ok qemu-img resize -q vm.qcow2 8M
expect_eq "$(imgtool bitmap --last-backup vm.qcow2 n)" "$T/tue.qcow2" "record after resize"
expect_status 1 imgtool export -s incremental -B n -b tue.qcow2 vm.qcow2 x.qcow2
expect_match "$(err)" "^imgtool: tue.qcow2: size 4194304 differs from vm.qcow2 \(8388608 bytes\)"

passed
