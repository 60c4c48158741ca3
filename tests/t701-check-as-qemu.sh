# imgtool check prints what qemu-img check prints, byte for byte: the
# --output=json object with qemu-img's key order (the hash order of QEMU's
# QDict) in every case (clean, leaks, corruptions, compressed and
# fragmented clusters, after -r leaks / -r all), and -q (nothing but the
# problem lines, no JSON either), with the same exit status.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need qemu-img qemu-io python3
# The image editor of t140 (one copy of it).
sed -n '/^cat > damage.py/,/^PY$/p' "$HERE/t140-qcow2-check.sh" | sed '1d;$d' > damage.py
damage() { python3 damage.py "$@" || die "damage.py $*"; }

ok qemu-img create -f qcow2 clean.qcow2 8M
ok qemu-io -c 'write -P 1 0 1M' -c 'write -P 3 7M 4k' clean.qcow2
damage clean.qcow2 leak.qcow2 'ref+1:l2' 'ref=1:200'
damage clean.qcow2 corrupt.qcow2 'ref-1:data0'
damage clean.qcow2 both.qcow2 'ref-1:data0' 'ref+1:data3' 'ref=1:150'
ok qemu-img convert -c -O qcow2 clean.qcow2 comp.qcow2
damage comp.qcow2 compleak.qcow2 'ref=1:100'

for img in clean leak corrupt both comp compleak; do
    for args in "" "-q" "--output=json" "-q --output=json" "-r leaks" "-r leaks -q" \
                "-r leaks --output=json" "-r all" "-r all -q" "-r all --output=json"; do
        cp $img.qcow2 X || die "copy $img.qcow2"
        qrc=0 && qemu-img check $args X > q.out 2> q.err || qrc=$?
        cp $img.qcow2 X || die "copy $img.qcow2"
        irc=0 && imgtool check $args X > i.out 2> i.err || irc=$?
        expect_eq "$irc" "$qrc" "$img $args: exit status"
        # Where qemu-img's JSON run fails without printing anything, imgtool
        # prints its JSON error object (imgtool(1), JSON ERRORS; issue 12).
        if [ ! -s q.out ] && [ "$irc" != 0 ] && [[ "$args" == *--output=json* ]] &&
           [[ "$args" != *-q* ]]; then
            expect_match "$(cat i.out)" '^\{"error": \{"class": "GenericError", "desc": "X: .+"\}\}$' \
                "$img $args: JSON error object"
        else
            expect_eq "$(cat i.out)" "$(cat q.out)" "$img $args: output"
        fi
        # The problem lines; the final "Check failed" line is worded differently.
        expect_eq "$(grep -v 'Check failed' i.err)" "$(grep -v 'Check failed' q.err)" \
            "$img $args: problem lines"
    done
done
passed
