# imgtool dd as qemu-img dd: the same bytes and the same (full) allocation
# for each bs/count/skip, raw and qcow2 outputs, qemu-img's size rule
# (count counts from the start of the input, skipped blocks included), and
# its messages for bad operands.  Where qemu-img leaves an empty output
# (skip too large), imgtool creates nothing.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

ok qemu-img create -q -f qcow2 s.qcow2 1M
ok qemu-io -c 'write -P 1 0 64k' -c 'write -z 128k 64k' -c 'write -P 3 256k 64k' \
    -c 'write -P 4 1000k 24k' s.qcow2

for ops in "bs=64k count=4 skip=1" "bs=4k" "bs=64k skip=2 count=3" "skip=100" "count=0" \
           "bs=1M count=10" "bs=1.5k skip=3" "bs=1000 count=700 skip=9" "bs=4k bs=8k skip=1"; do
    for fmt in raw qcow2; do
        ok qemu-img dd -O $fmt if=s.qcow2 of=q.$fmt $ops
        ok imgtool dd -O $fmt if=s.qcow2 of=i.$fmt $ops
        expect_eq "$(qemu-img info -f $fmt --output=json i.$fmt | grep '"virtual-size"')" \
            "$(qemu-img info -f $fmt --output=json q.$fmt | grep '"virtual-size"')" "dd $ops -O $fmt: size"
        same_content -f $fmt -F $fmt q.$fmt i.$fmt
        expect_eq "$(map_alloc $fmt i.$fmt)" "$(map_alloc $fmt q.$fmt)" "dd $ops -O $fmt: allocation"
        rm -f q.$fmt i.$fmt
    done
done
# skip=4 count=5 bs=64k: block 4 of the input (at 256k), only.
ok imgtool dd if=s.qcow2 of=b.raw bs=64k skip=4 count=5
ok qemu-io -f raw -c 'read -P 3 0 64k' b.raw
expect_eq "$(stat -c %s b.raw)" 65536 "one block"
# An existing output is replaced.
ok imgtool dd if=s.qcow2 of=b.raw bs=64k count=1
ok qemu-io -f raw -c 'read -P 1 0 64k' b.raw
expect_eq "$(stat -c %s b.raw)" 65536 "replaced"

# Bad operands: qemu-img's words (its two-line message is one line here).
for ops in "bs=0" "bs=3G" "bs=-1" "bs=abc" "count=abc" "skip=-1" "foo=1" "foo" "=3"; do
    expect_status 1 qemu-img dd if=s.qcow2 of=x.raw $ops
    q=$(err | sed 's/^qemu-img: //' | paste -sd ' ')
    expect_status 1 imgtool dd if=s.qcow2 of=x.raw $ops
    expect_eq "$(err | head -n 1)" "imgtool dd: $q" "dd $ops"
done
expect_status 1 imgtool dd if=s.qcow2
expect_match "$(err)" "Must specify both input and output files"
expect_status 1 imgtool dd of=x.raw
rm -f x.raw
expect_status 1 imgtool dd if=s.qcow2 of=x.raw bs=64k skip=100
expect_eq "$(err)" "imgtool: s.qcow2: cannot skip to specified offset" "skip past the end"
[ ! -e x.raw ] || die "a failed dd created its output"
passed
