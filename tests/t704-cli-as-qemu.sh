# The command line as qemu-img users type it: --help usage lines name
# "imgtool CMD"; long options may be abbreviated where unambiguous, as
# getopt_long takes them (--out=json), and an ambiguous one is an error
# naming the candidates; resize takes "IMG -512M" without "--"; the
# progress bar fits the terminal; stdout and stderr lines come out in
# order when both go to one pipe.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io script

for c in create info check map compare convert resize io commit rebase; do
    ok imgtool $c --help
    expect_match "$(out)" "^Usage: imgtool $c " "$c --help usage line"
done

ok qemu-img create -q -f qcow2 a.qcow2 4M
ok qemu-io -c 'write -P 1 0 1M' a.qcow2
ok imgtool map --out=json a.qcow2
expect_eq "$(out)" "$(qemu-img map --out=json a.qcow2)" "map --out=json"
ok imgtool map --outp json --start=1M a.qcow2
expect_eq "$(out)" "$(qemu-img map --output json --start-offset=1M a.qcow2)" "map --outp json --start=1M"
ok imgtool check --out=json --rep=all a.qcow2
expect_eq "$(out)" "$(qemu-img check --out=json a.qcow2)" "check --out=json --rep=all"
ok imgtool compare --stri a.qcow2 a.qcow2
expect_status 1 imgtool check --f a.qcow2
expect_match "$(err)" "option '--f' is ambiguous; possibilities: '--format' '--force-share'"
expect_status 1 imgtool info --nosuch a.qcow2
# A value is not taken for an option.
ok imgtool create -q -f raw -o size=1M -- --out
[ -e ./--out ] || die "create -- --out: no file"

# resize IMG -SIZE, as qemu-img (the size is the last argument).
ok imgtool resize a.qcow2 +1M
ok imgtool resize --shrink a.qcow2 -512K
expect_eq "$(qemu-img info --output=json a.qcow2 | grep '"virtual-size"')" \
    '    "virtual-size": 4718592,' "size after resize -512K"
expect_status 1 imgtool resize a.qcow2 -1k
expect_match "$(err)" "use --shrink"
ok imgtool resize -q --shrink a.qcow2 -- -512K
expect_eq "$(qemu-img info --output=json a.qcow2 | grep '"virtual-size"')" \
    '    "virtual-size": 4194304,' "size after resize -- -512K"

# The progress bar on a 40-column terminal stays within 39 columns.
for cols in 40 60; do
    script -qc "stty cols $cols; '$IMGTOOL' convert -p -O raw a.qcow2 p.raw" /dev/null > tty.out
    width=$(tr '\r' '\n' < tty.out | awk '{ if (length($0) > w) w = length($0) } END { print w }')
    checks=$((checks + 1))
    [ "$width" -lt "$cols" ] || die "progress line of $width columns on a $cols-column terminal"
    expect_match "$(cat tty.out)" '\(100\.0/100%\) \[#+\]' "progress bar at $cols columns"
done

# io: the lines printed before an error come before it.
rc=0
"$IMGTOOL" io -c 'write -P 1 0 512' -c 'read -P 9 0 512' a.qcow2 > both.out 2>&1 || rc=$?
expect_eq "$rc" 1 "io exit status"
expect_eq "$(head -n 1 both.out)" "wrote 512/512 bytes at offset 0" "io line order"
expect_match "$(sed -n 2p both.out)" "pattern verification failed" "io line order"
passed
