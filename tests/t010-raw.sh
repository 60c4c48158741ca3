# The raw driver end to end, checked against qemu-img and qemu-io.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# create: same size and sparseness as qemu-img's.
ok imgtool create -f raw a.raw 64M
expect_eq "$(out)" "Formatting 'a.raw', fmt=raw size=67108864"
expect_eq "$(stat -c %s a.raw)" 67108864
ok imgtool info --output=json a.raw
expect_match "$(out)" '"virtual-size": 67108864'
expect_match "$(out)" '"format": "raw"'
ok imgtool info a.raw
expect_match "$(out)" '^virtual size: 64 MiB \(67108864 bytes\)'

# io writes, verified by qemu-io, and the reverse.
ok imgtool io -c 'write -P 0xab 0 64k' -c 'write -P 0x11 1M 1M' -c 'write -P 0x22 40M 512' a.raw
ok qemu-io -f raw -c 'read -P 0xab 0 64k' -c 'read -P 0x11 1M 1M' -c 'read -P 0x22 40M 512' a.raw
expect_match "$(qemu-io -f raw -c 'read -P 0xab 0 64k' -c 'read -P 0x11 1M 1M' a.raw)" '^read 65536/65536'
ok qemu-io -f raw -c 'write -P 0x33 8M 128k' a.raw
ok imgtool io -c 'read -P 0x33 8M 128k' -c 'read -P 0 9M 64k' a.raw
expect_status 1 imgtool io -c 'read -P 0x34 8M 128k' a.raw
expect_match "$(err)" 'a.raw: pattern verification failed at offset 8388608'
expect_status 1 imgtool io -c 'write 63M 2M' a.raw
expect_match "$(err)" 'beyond the end of the image'

# zero and discard make holes, so map shows them as zero.
ok imgtool io -c 'write -z -u 1M 512k' -c 'discard 8M 128k' a.raw
ok qemu-io -f raw -c 'read -P 0 1M 512k' -c 'read -P 0x11 1536k 512k' -c 'read -P 0 8M 128k' a.raw

# map agrees with qemu-img map exactly.
ok imgtool map --output=json a.raw
mine=$(out)
theirs=$(qemu-img map -f raw --output=json a.raw)
expect_eq "$mine" "$theirs" "map --output=json"
ok imgtool map a.raw
expect_eq "$(out)" "$(qemu-img map -f raw a.raw)" "human map"

# convert: identical content, sparse result.
ok imgtool convert -O raw a.raw b.raw
same_content -f raw -F raw a.raw b.raw
expect_eq "$(imgtool map --output=json b.raw | grep -c '"data": true')" \
          "$(qemu-img map -f raw --output=json a.raw | grep -c '"data": true')" "data extents after convert"
actual_a=$(stat -c %b a.raw); actual_b=$(stat -c %b b.raw)
[ "$actual_b" -le "$actual_a" ] || die "convert output is less sparse ($actual_b > $actual_a blocks)"

# convert -n into an existing target that has other data: zeroes are written.
ok qemu-img create -f raw c.raw 64M
ok qemu-io -f raw -c 'write -P 0x77 0 64M' c.raw
ok imgtool convert -n a.raw c.raw
same_content -f raw -F raw a.raw c.raw

# compare: exit statuses and messages as qemu-img's.
ok imgtool compare a.raw b.raw
expect_eq "$(out)" "Images are identical."
ok imgtool io -c 'write -P 0x99 5M 4k' b.raw
expect_status 1 imgtool compare a.raw b.raw
expect_eq "$(out)" "Content mismatch at offset 5242880!"
expect_status 1 qemu-img compare a.raw b.raw

# resize: grow, refuse to shrink without --shrink, shrink.
ok imgtool resize a.raw +16M
expect_eq "$(stat -c %s a.raw)" $((80 << 20))
expect_status 1 imgtool resize a.raw 1M
expect_match "$(err)" 'use --shrink'
ok imgtool resize --shrink a.raw 2M
expect_eq "$(qemu-img info --output=json a.raw | grep -c '"virtual-size": 2097152')" 1

# O_DIRECT (--cache=none / -t none): aligned and unaligned requests both work.
ok imgtool create -q -f raw d.raw 1M
ok imgtool io -t none -c 'write -P 0x41 100 1000' -c 'write -P 0x42 64k 64k' -c 'read -P 0x41 100 1000' d.raw
ok qemu-io -f raw -c 'read -P 0x41 100 1000' -c 'read -P 0x42 64k 64k' -c 'read -P 0 1100 1000' d.raw
ok imgtool convert -t none -T none d.raw d2.raw
same_content -f raw -F raw d.raw d2.raw
expect_status 1 imgtool io -t bogus -c 'read 0 1' d.raw
expect_match "$(err)" "invalid cache mode 'bogus'"

# Sizes compare like qemu-img: a larger image with a zero tail is identical.
ok qemu-img create -f raw s1.raw 1M
ok qemu-img create -f raw s2.raw 2M
ok imgtool compare s1.raw s2.raw
expect_eq "$(out)" "Warning: Image size mismatch!
Images are identical."
expect_status 1 imgtool compare -s s1.raw s2.raw
passed
