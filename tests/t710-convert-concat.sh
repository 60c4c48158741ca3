# convert with several sources, as qemu-img: they are concatenated into one
# target whose size is the sum of theirs; what qemu-img refuses with several
# sources (-B, -o backing_file, --bitmaps, -l) is refused with its message.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

vsize() { qemu-img info -f "$1" --output=json "$2" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p'; }

ok qemu-img create -q -f qcow2 a.qcow2 192k
ok qemu-io -c 'write -P 1 0 64k' -c 'write -z 128k 64k' a.qcow2
ok qemu-img create -q -f raw b.raw 100k
ok qemu-io -f raw -c 'write -P 2 4k 8k' b.raw
ok qemu-img create -q -f qcow2 c.qcow2 1M
ok qemu-io -c 'write -P 3 960k 64k' c.qcow2

for fmt in raw qcow2; do
    ok qemu-img convert -O $fmt a.qcow2 b.raw c.qcow2 q.$fmt
    ok imgtool convert -O $fmt a.qcow2 b.raw c.qcow2 i.$fmt
    expect_eq "$(vsize $fmt i.$fmt)" $((192 * 1024 + 100 * 1024 + 1024 * 1024)) "-O $fmt: size"
    same_content -f $fmt -F $fmt q.$fmt i.$fmt
    expect_eq "$(map_alloc $fmt i.$fmt)" "$(map_alloc $fmt q.$fmt)" "-O $fmt: allocation"
done
# Each source lands at the sum of the sizes before it.
ok qemu-io -f raw -c 'read -P 1 0 64k' -c 'read -P 0 64k 128k' -c 'read -P 2 196k 8k' \
    -c 'read -P 3 1252k 64k' i.raw
expect_eq "$(out | grep -c 'verification failed')" 0 "concatenated contents"
ok imgtool convert -c -O qcow2 a.qcow2 b.raw c.qcow2 ic.qcow2
same_content -f qcow2 -F raw ic.qcow2 i.raw
qemu_clean ic.qcow2
# -n: a larger target is fine, a smaller one is refused.
truncate -s 2M big.raw
ok imgtool convert -n -O raw a.qcow2 b.raw c.qcow2 big.raw
ok qemu-img compare -f raw -F raw big.raw i.raw
truncate -s 1M small.raw
expect_status 1 imgtool convert -n -O raw a.qcow2 b.raw c.qcow2 small.raw
expect_match "$(err)" "small.raw: target is smaller"

# What qemu-img refuses with several sources, in its words.
refused() {
    expect_status 1 qemu-img convert "$@"
    local q=$(err | head -n 1)
    expect_status 1 imgtool convert "$@"
    expect_eq "$(err | head -n 1)" "${q/qemu-img:/imgtool convert:}" "convert $*"
    [ ! -e x.qcow2 ] || die "convert $* created its target"
}
refused -O qcow2 -B a.qcow2 -F qcow2 a.qcow2 b.raw x.qcow2
refused -O qcow2 -o backing_file=a.qcow2,backing_fmt=qcow2 a.qcow2 b.raw x.qcow2
refused -O qcow2 --bitmaps a.qcow2 b.raw x.qcow2
refused -O qcow2 -l snap a.qcow2 b.raw x.qcow2
passed
