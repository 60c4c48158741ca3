# The common options are spelled as QEMU's tools spell them: every command
# that qemu-img also has takes the qemu-img options -f -O -o -U --output -q
# -p wherever "qemu-img --help" lists them for that command, and "imgtool io"
# takes qemu-io's -c -f -r -n -t -U with qemu-io's long names.  Then the
# options added for that: compare -T and -p, io -n.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

ok imgtool help
commands=$(out | sed -n '/^Commands:$/,/^$/s/^  \([a-z][a-z0-9-]*\) .*/\1/p')
syntax=$(qemu-img --help | sed -n '/^Command syntax:$/,/^$/p')

# has_option HELP OPT: "imgtool CMD --help" lists OPT ("-f" or "--output").
has_option() {
    case $2 in
    --*) grep -qE -- "^ +(-[A-Za-z], )?$2([= ]|$)" <<<"$1" ;;
    *) grep -qE -- "^ +$2, --" <<<"$1" ;;
    esac
}
compared=0
for cmd in $commands; do
    line=$(grep -E "^  $cmd " <<<"$syntax") || continue
    compared=$((compared + 1))
    ok imgtool "$cmd" --help
    help=$(out)
    for opt in -f -O -o -U -q -p --output; do
        if [ "$opt" = --output ]; then
            grep -qF -- '--output=' <<<"$line" || continue
        else
            grep -qE -- "(^|[[ ])$opt( |\\]|$)" <<<"$line" || continue
        fi
        checks=$((checks + 1))
        has_option "$help" "$opt" ||
            die "qemu-img $cmd has $opt but 'imgtool $cmd --help' does not list it"
    done
done
[ $compared -ge 6 ] || die "only $compared commands found in both imgtool help and qemu-img --help"

# io and qemu-io: the same short letters with the same long names.
ok imgtool io --help
mine=$(out)
theirs=$(qemu-io --help)
for opt in c f r n t U; do
    spelling=$(grep -oE -- "^ +-$opt, --[a-z-]+" <<<"$theirs" | sed 's/^ *//')
    [ -n "$spelling" ] || die "qemu-io --help has no -$opt"
    expect_match "$mine" "^ +$spelling([= ]|$)" "imgtool io --help for '$spelling'"
done

# compare -T: the cache mode of both images, as qemu-img compare -T.
ok imgtool create -q a.raw 4M
ok imgtool io -q -c 'write -P 0x3c 1M 64k' a.raw
ok qemu-img create -q -f raw b.raw 4M
ok qemu-io -f raw -c 'write -P 0x3c 1M 64k' -c 'write -P 0x3d 2M 512' b.raw
expect_status 1 imgtool compare -T writeback a.raw b.raw
expect_eq "$(out)" "Content mismatch at offset 2097152!"
expect_status 2 imgtool compare -T bogus a.raw b.raw
expect_match "$(err)" "^imgtool: invalid cache mode 'bogus'"
direct=0
dd if=/dev/zero of=direct.probe bs=4096 count=1 oflag=direct 2>/dev/null && direct=1
if [ $direct = 1 ]; then
    expect_status 1 imgtool compare -T none a.raw b.raw
    expect_eq "$(out)" "Content mismatch at offset 2097152!"
    # io -n is -t none (O_DIRECT), as in qemu-io.
    ok imgtool io -n -c 'write -P 0x3d 2M 512' a.raw
    ok imgtool compare -T none a.raw b.raw
    expect_eq "$(out)" "Images are identical."
    ok qemu-io -f raw -n -c 'read -P 0x3d 2M 512' -c 'read -P 0x3c 1M 64k' a.raw
fi
# check -T, as qemu-img check -T (raw has no checks: 63).
expect_status 63 imgtool check -T writeback a.raw
expect_status 1 imgtool check -T bogus a.raw
expect_match "$(err)" "^imgtool: invalid cache mode 'bogus'"
expect_status 1 imgtool io -n -t writeback -c 'read 0 512' a.raw
expect_match "$(err)" "^imgtool io: -n means -t none, not -t writeback$"

# compare -s: the same verdict and message as qemu-img compare -s, which
# also tells holes from written zeroes, and a run that reaches the end of
# the image from one that does not.
ok imgtool create -q hole.raw 1M
ok imgtool create -q zeroed.raw 1M
ok imgtool io -q -c 'write -P 0 0 64k' zeroed.raw
ok imgtool create -q tail1.raw 1M
ok imgtool io -q -c 'write -P 0 0 64k' -c 'write -P 0 900k 4k' tail1.raw
ok imgtool create -q tail2.raw 1M
ok imgtool io -q -c 'write -P 0 0 64k' -c 'write -P 0 900k 4k' -c 'write -P 0 1020k 4k' tail2.raw
ok imgtool create -q big.raw 2M
for pair in "hole.raw zeroed.raw" "zeroed.raw hole.raw" "zeroed.raw tail1.raw" \
            "tail1.raw tail2.raw" "tail1.raw tail1.raw" "hole.raw big.raw" "a.raw b.raw"; do
    set -- $pair
    want=$(qemu-img compare -s -f raw -F raw "$1" "$2"); want_status=$?
    expect_status "$want_status" imgtool compare -s "$1" "$2"
    expect_eq "$(out)" "$want" "compare -s $1 $2"
done
ok imgtool compare hole.raw zeroed.raw
expect_eq "$(out)" "Images are identical."

# compare -p: a progress bar on a terminal, nothing when stderr is a file.
ok imgtool compare -p a.raw b.raw
expect_eq "$(err)" "" "progress output without a terminal"
if command -v script >/dev/null; then
    tty=$(script -qec "'$IMGTOOL' compare -p a.raw b.raw" /dev/null | tr -d '\r')
    expect_match "$tty" '\(100\.0/100%\) \[#{40}\]' "progress bar of compare -p"
    expect_match "$tty" '^Images are identical\.$' "result of compare -p"
    tty=$(script -qec "'$IMGTOOL' compare -q -p a.raw b.raw" /dev/null)
    expect_eq "$tty" "" "compare -q -p on a terminal"
fi
passed
