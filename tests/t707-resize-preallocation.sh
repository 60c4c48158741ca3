# resize --preallocation=metadata|falloc|full grows an image as qemu-img
# resize does (the same extents, the data's place allocated in the file for
# falloc and full); a mode the format has not, or shrinking with one, is
# refused before the size changes.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

for f in qcow2 raw; do
    for m in metadata falloc full; do
        [ $f = raw ] && [ $m = metadata ] && continue
        ok qemu-img create -q -f $f q.$f 1M
        ok qemu-img create -q -f $f i.$f 1M
        ok qemu-io -f $f -c 'write -P 1 0 64k' q.$f
        ok qemu-io -f $f -c 'write -P 1 0 64k' i.$f
        ok qemu-img resize -q -f $f --preallocation=$m q.$f +2M
        ok imgtool resize -q -f $f --preallocation=$m i.$f +2M
        # The same extents; qemu-img may put the new clusters elsewhere.
        expect_eq "$(qemu-img map -f $f --output=json i.$f | sed 's/, "offset": [0-9]*//')" \
            "$(qemu-img map -f $f --output=json q.$f | sed 's/, "offset": [0-9]*//')" \
            "$f --preallocation=$m: map"
        if [ $m != metadata ]; then
            checks=$((checks + 1))
            [ "$(du -k i.$f | cut -f1)" -ge 2112 ] || die "$f --preallocation=$m: not allocated"
        fi
        same_content -f $f -F $f i.$f q.$f
        [ $f = qcow2 ] && qemu_clean i.qcow2
        rm -f q.$f i.$f
    done
done
ok qemu-img create -q -f raw r.raw 1M
expect_status 1 imgtool resize -f raw --preallocation=metadata r.raw +1M
expect_match "$(err)" "format 'raw' does not support preallocation=metadata"
expect_eq "$(stat -c %s r.raw)" 1048576 "size after a refused preallocation"
expect_status 1 imgtool resize --shrink -f raw --preallocation=full r.raw -512K
expect_match "$(err)" "Preallocation can only be used for growing images"
expect_status 1 imgtool resize -f raw --preallocation=bogus r.raw +1M
expect_match "$(err)" "Invalid preallocation mode 'bogus'"
expect_eq "$(stat -c %s r.raw)" 1048576 "size after refused resizes"
passed
