# convert writes a chunk that is one run of plainly stored source data
# (raw, plain qcow2 clusters) from a mapping of the source file instead of
# a buffer; with -T none (O_DIRECT) and -U the source is read as before.
# All three ways give the same disk as qemu-img convert and its allocation
# (zero blocks inside the data are still found and left out), for sources
# whose size is not a multiple of the page size, an overlay whose data
# comes from its backing file, and several sources concatenated.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# Data with a zeroed 4 KiB block in it, a hole, data up to the partial
# last page (3 MiB + 1001 bytes).
size=$(((3 << 20) + 1001))
truncate -s $size s.raw
ok qemu-io -f raw -c 'write -P 7 0 1M' -c 'write -z 512k 4k' \
    -c "write -P 8 2M $((size - (2 << 20)))" s.raw
ok qemu-img convert -f raw -O qcow2 s.raw s.qcow2
ok qemu-img create -q -f qcow2 -F qcow2 -b s.qcow2 top.qcow2
ok qemu-io -c 'write -P 9 64k 64k' top.qcow2

for src in s.raw s.qcow2 top.qcow2; do
    sfmt=qcow2
    [ $src = s.raw ] && sfmt=raw
    for fmt in raw qcow2; do
        ok qemu-img convert -f $sfmt -O $fmt $src q.$fmt
        for mode in "" "-T none" "-U"; do
            ok imgtool convert $mode -f $sfmt -O $fmt $src i.$fmt
            same_content -f $sfmt -F $fmt $src i.$fmt
            expect_eq "$(map_alloc $fmt i.$fmt)" "$(map_alloc $fmt q.$fmt)" \
                "$src -> $fmt${mode:+ $mode}: allocation"
            rm -f i.$fmt
        done
        rm -f q.$fmt
    done
done

# Two sources, the second starting in the middle of a target chunk.
ok imgtool convert -f raw -O raw s.raw s.raw cat.raw
ok qemu-img convert -f raw -O raw s.raw s.raw qcat.raw
ok cmp cat.raw qcat.raw
expect_eq "$(map_alloc raw cat.raw)" "$(map_alloc raw qcat.raw)" "concatenated: allocation"
passed
