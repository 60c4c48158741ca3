# export: every backup records which disk and which point of the bitmap's
# history it captures, and an incremental or differential backup refuses a
# --backing that is not the backup its bitmap counts from (issue 12 item 1):
# exit 1, one line naming the expected file, no backup created, bitmap and
# records unchanged.  --force overrides.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/export-lib.sh"

full_then_mon
ok qemu-io -c 'write -P 3 1M 64k' vm.qcow2
ok qemu-img convert -U -O raw vm.qcow2 tue.raw
expect_eq "$(imgtool bitmap --last-backup vm.qcow2 n)" "$T/mon.qcow2" "last backup after mon"

# The reproducer of the issue: tue backed by full instead of mon.
before=$(imgtool bitmap --dump --output=json vm.qcow2 n | tr -d ' \n')
sum_before=$(md5sum < vm.qcow2)
expect_status 1 imgtool export -s incremental -B n -b full.qcow2 vm.qcow2 tue.qcow2
expect_eq "$(err)" "imgtool: full.qcow2: not the last backup; bitmap 'n' of vm.qcow2 counts from $T/mon.qcow2: give that as --backing (or --force)" "refusal"
expect_eq "$(out)" "" "output of a refused export"
[ ! -e tue.qcow2 ] || die "a refused export created tue.qcow2"
ls -a | grep -q imgtool-tmp && die "a refused export left $(ls -a | grep imgtool-tmp)"
expect_eq "$(imgtool bitmap --dump --output=json vm.qcow2 n | tr -d ' \n')" "$before" "bitmap after the refusal"
expect_eq "$(md5sum < vm.qcow2)" "$sum_before" "vm.qcow2 after the refusal"

# The right predecessor works, and restores the disk.
ok imgtool export -q -s incremental -B n -b mon.qcow2 vm.qcow2 tue.qcow2
same_content -F raw tue.qcow2 tue.raw
expect_eq "$(imgtool bitmap --last-backup vm.qcow2 n)" "$T/tue.qcow2" "last backup after tue"
# An older backup than the last, and the new backup itself, are refused.
expect_status 1 imgtool export -s incremental -B n -b mon.qcow2 vm.qcow2 wed.qcow2
expect_match "$(err)" "^imgtool: mon.qcow2: not the last backup; .* counts from $T/tue.qcow2: "
# A backup given by another name (absolute, through a symlink) is the same backup.
ln -s tue.qcow2 link.qcow2
ok qemu-io -c 'write -P 4 2M 4k' vm.qcow2
ok imgtool export -q -s incremental -B n -b "$T/link.qcow2" vm.qcow2 wed.qcow2
for f in full mon tue wed vm; do qemu_clean $f.qcow2; done

# A backup of another disk, a file that is no backup, a copy made by
# qemu-img convert (no record): all refused, naming wed.
ok imgtool create -q -f qcow2 vm2.qcow2 4M
ok imgtool export -q -B n vm2.qcow2 other.qcow2
expect_status 1 imgtool export -s incremental -B n -b other.qcow2 vm.qcow2 x.qcow2
expect_eq "$(err)" "imgtool: other.qcow2: a backup of another disk; bitmap 'n' of vm.qcow2 counts from $T/wed.qcow2: give that as --backing (or --force)"
ok qemu-img create -q -f qcow2 plain.qcow2 4M
expect_status 1 imgtool export -s incremental -B n -b plain.qcow2 vm.qcow2 x.qcow2
expect_match "$(err)" "^imgtool: plain.qcow2: has no backup record .* counts from $T/wed.qcow2: "
ok qemu-img convert -O qcow2 wed.qcow2 wedcopy.qcow2
expect_status 1 imgtool export -s incremental -B n -b wedcopy.qcow2 vm.qcow2 x.qcow2
expect_match "$(err)" "^imgtool: wedcopy.qcow2: has no backup record \(a copy made by qemu-img convert\?\); bitmap 'n' of vm.qcow2 counts from $T/wed.qcow2: "
[ ! -e x.qcow2 ] || die "a refused export created x.qcow2"

# --force accepts the copy (it holds the same data): the chain restores,
# and the bitmap now counts from the forced backup.
ok qemu-io -c 'write -P 5 3M 64k' vm.qcow2
ok qemu-img convert -U -O raw vm.qcow2 thu.raw
ok imgtool export -q --force -s incremental -B n -b wedcopy.qcow2 vm.qcow2 thu.qcow2
same_content -F raw thu.qcow2 thu.raw
qemu_clean thu.qcow2
expect_eq "$(imgtool bitmap --last-backup vm.qcow2 n)" "$T/thu.qcow2" "last backup after --force"

# A bitmap no export started (added by qemu-img) has no record: refused.
ok qemu-img bitmap --add vm.qcow2 q
expect_status 1 imgtool export -s incremental -B q -b thu.qcow2 vm.qcow2 x.qcow2
expect_eq "$(err)" "imgtool: vm.qcow2: bitmap 'q' has no backup record (no imgtool export started it, or another job cleared it since): take a full backup (or --force)"
expect_status 1 imgtool bitmap --last-backup vm.qcow2 q
expect_eq "$(err)" "imgtool: vm.qcow2: bitmap 'q' has no backup record (no imgtool export synchronised it)"
expect_status 1 imgtool export -s incremental -B nosuch -b thu.qcow2 vm.qcow2 x.qcow2
expect_eq "$(err)" "imgtool: vm.qcow2: no bitmap 'nosuch'"

# Differential: a bitmap used only by full and differential backups counts
# from the full backup, every night; a checkpoint counts from its backup.
ok imgtool export -q -B d --checkpoint=cp vm.qcow2 dfull.qcow2
ok qemu-io -c 'write -P 6 0 64k' vm.qcow2
ok imgtool export -q -s differential -B d -b dfull.qcow2 vm.qcow2 d1.qcow2
ok qemu-io -c 'write -P 7 1M 64k' vm.qcow2
ok qemu-img convert -U -O raw vm.qcow2 d2.raw
expect_status 1 imgtool export -s differential -B d -b d1.qcow2 vm.qcow2 d2.qcow2
expect_eq "$(err)" "imgtool: d1.qcow2: not the last backup; bitmap 'd' of vm.qcow2 counts from $T/dfull.qcow2: give that as --backing (or --force)"
expect_status 1 imgtool export -s differential --since=cp -b thu.qcow2 vm.qcow2 d2.qcow2
expect_match "$(err)" "^imgtool: thu.qcow2: not the last backup; bitmap 'cp' of vm.qcow2 counts from $T/dfull.qcow2: "
ok imgtool export -q -s differential -B d -b dfull.qcow2 vm.qcow2 d2.qcow2
same_content -F raw d2.qcow2 d2.raw
ok imgtool export -q -s differential --since=cp -b dfull.qcow2 vm.qcow2 d2cp.qcow2
same_content -F raw d2cp.qcow2 d2.raw
expect_eq "$(imgtool bitmap --last-backup vm.qcow2 d)" "$T/dfull.qcow2" "a differential leaves the bitmap's record"
# The incremental chain of bitmap n is not affected by the other bitmaps.
expect_eq "$(imgtool bitmap --last-backup vm.qcow2 n)" "$T/thu.qcow2" "bitmap n's record"
for f in dfull d1 d2 d2cp vm; do qemu_clean $f.qcow2; done
passed
