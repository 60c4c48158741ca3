# A damaged or foreign backup chain record (issue 12 item 1): every field
# is validated; a bad record on the disk or on the predecessor refuses the
# incremental with one line naming the file (exit 1, nothing written), a
# full backup replaces a bad disk record, and --force goes on; qemu-img
# check ignores the record.
tests=$(cd "$(dirname "$0")" && pwd)
. "$tests/lib.sh"
. "$tests/export-lib.sh"
need python3

full_then_mon
# poke FILE OFFSET BYTE: set one byte of the record's data (offset within it).
poke() {
    python3 - "$@" <<'PY'
import struct, sys
path, off, val = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0)
with open(path, 'r+b') as f:
    d = bytearray(f.read(65536))
    pos = struct.unpack('>I', d[100:104])[0]
    while True:
        t, n = struct.unpack('>II', d[pos:pos + 8])
        if t == 0:
            sys.exit("no record in " + path)
        if t == 0x696d6772:
            break
        pos += 8 + ((n + 7) & ~7)
    d[pos + 8 + off] = val
    f.seek(0)
    f.write(d)
PY
}
cp vm.qcow2 vm.orig; cp mon.qcow2 mon.orig

# Each damage of the disk's record: a newer version, too many entries, an
# unknown entry kind, a name length past the end, a NUL in a name.
for damage in "3 2" "23 255" "24 9" "26 200" "80 0"; do
    cp vm.orig vm.qcow2
    poke vm.qcow2 $damage
    qemu_clean vm.qcow2
    expect_status 1 imgtool export -s incremental -B n -b mon.qcow2 vm.qcow2 tue.qcow2
    expect_match "$(err)" "^imgtool: vm.qcow2: the backup chain record \([0-9]+ bytes\) is damaged or of a newer imgtool$" "damage $damage"
    [ ! -e tue.qcow2 ] || die "a refused export created tue.qcow2"
    expect_status 1 imgtool bitmap --last-backup vm.qcow2 n
done
# --force goes on (and writes a new record); so does a full backup.
ok imgtool export -q --force -s incremental -B n -b mon.qcow2 vm.qcow2 tue.qcow2
expect_eq "$(imgtool bitmap --last-backup vm.qcow2 n)" "$T/tue.qcow2" "record after --force"
cp vm.orig vm.qcow2; poke vm.qcow2 3 2
ok imgtool export -q -B n vm.qcow2 full2.qcow2
expect_eq "$(imgtool bitmap --last-backup vm.qcow2 n)" "$T/full2.qcow2" "record after a full backup"
qemu_clean vm.qcow2

# A damaged predecessor record.
cp vm.orig vm.qcow2; rm -f tue.qcow2
poke mon.qcow2 24 7
qemu_clean mon.qcow2
expect_status 1 imgtool export -s incremental -B n -b mon.qcow2 vm.qcow2 tue.qcow2
expect_match "$(err)" "^imgtool: mon.qcow2: the backup chain record \([0-9]+ bytes\) is damaged or of a newer imgtool$"
[ ! -e tue.qcow2 ] || die "a refused export created tue.qcow2"
passed
