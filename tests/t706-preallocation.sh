# create -o preallocation=metadata|falloc|full, as qemu-img: a raw image's
# file is allocated (falloc: fallocate, the first block written as QEMU
# does; full: zeroes written) and maps as qemu-img's does; a qcow2 image
# with the default cluster size maps as qemu-img's (metadata: byte for
# byte), its data allocated in the file with falloc and full;
# every one reads as zeroes and checks clean.
. "$(dirname "$0")/lib.sh"
need qemu-img

for m in falloc full; do
    rm -f i.raw q.raw
    ok imgtool create -q -f raw -o preallocation=$m i.raw 3M
    ok qemu-img create -q -f raw -o preallocation=$m q.raw 3M
    expect_eq "$(qemu-img map -f raw --output=json i.raw)" "$(qemu-img map -f raw --output=json q.raw)" \
        "raw preallocation=$m: map"
    expect_eq "$(stat -c %s i.raw)" 3145728 "raw preallocation=$m: size"
    same_content -f raw -F raw i.raw q.raw
done
expect_eq "$(du -k i.raw | cut -f1)" "$(du -k q.raw | cut -f1)" "raw full: blocks"
for m in metadata falloc full; do
    for size in 3M 100M; do
        rm -f i.qcow2 q.qcow2
        ok imgtool create -q -f qcow2 -o preallocation=$m i.qcow2 $size
        ok qemu-img create -q -f qcow2 -o preallocation=$m q.qcow2 $size
        if [ $m = metadata ]; then
            checks=$((checks + 1))
            cmp -s i.qcow2 q.qcow2 || die "qcow2 preallocation=$m $size: not qemu-img's bytes: $(cmp i.qcow2 q.qcow2)"
        fi
        # falloc/full: QEMU puts the refcount structures elsewhere; the
        # guest view and the data's host runs are the same.
        expect_eq "$(qemu-img map --output=json i.qcow2)" "$(qemu-img map --output=json q.qcow2)" \
            "qcow2 preallocation=$m $size: map"
        qemu_clean i.qcow2
        if [ $m != metadata ]; then
            checks=$((checks + 1))
            [ $(($(du -k i.qcow2 | cut -f1) * 1024)) -ge $(numfmt --from=iec $size) ] ||
                die "qcow2 preallocation=$m $size: the data is not allocated in the file"
        fi
    done
done
# Other cluster sizes: a valid image that reads as zeroes (qemu-img lays
# out falloc/full metadata differently there).
for m in metadata falloc full; do
    rm -f i.qcow2
    ok imgtool create -q -f qcow2 -o preallocation=$m,cluster_size=4k i.qcow2 5M
    qemu_clean i.qcow2
    ok qemu-img create -q -f raw zero.raw 5M
    same_content -F raw i.qcow2 zero.raw
    rm -f zero.raw
done
expect_status 1 imgtool create -q -f raw -o preallocation=bogus x.raw 1M
expect_match "$(err)" "Parameter 'preallocation' does not accept value 'bogus'"
passed
