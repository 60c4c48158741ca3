# convert through the copy engine: several requests in flight, request
# sizes, -W, -c refused for raw; results checked with qemu-img.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# A sparse source: data runs of several sizes (some not 64k aligned),
# written zeroes, holes, and data at the very end.
ok qemu-img create -f raw src.raw 200M
ok qemu-io -f raw -c 'write -P 0x11 0 3M' -c 'write -P 0x22 5M 4k' \
    -c 'write -P 0 6M 2M' -c 'write -P 0x33 9M 12k' -c 'write -P 0x44 60M 33M' \
    -c 'write -P 0 100M 1M' -c 'write -P 0x55 101M 64k' -c 'write -P 0x66 199M 1M' src.raw
ok qemu-img convert -f raw -O raw src.raw ref.raw
ref_map=$(qemu-img map -f raw --output=json ref.raw)

for m in 1 4 16; do
    for b in 64k 2M; do
        ok imgtool convert -m "$m" --buf-size "$b" -O raw src.raw "out-$m-$b.raw"
        same_content -f raw -F raw src.raw "out-$m-$b.raw"
        # As sparse as qemu-img makes it: zeroes written in the source
        # become holes.
        expect_eq "$(qemu-img map -f raw --output=json "out-$m-$b.raw")" "$ref_map" \
            "map of out-$m-$b.raw"
    done
done
ok imgtool convert -W --max-in-flight=8 src.raw w.raw
same_content -f raw -F raw src.raw w.raw

# -n into a target full of other data: zeroes are written where needed.
ok qemu-img create -f raw garbage.raw 200M
ok qemu-io -f raw -c 'write -P 0xee 0 150M' garbage.raw
ok imgtool convert -n -m 8 --buf-size 256k src.raw garbage.raw
same_content -f raw -F raw src.raw garbage.raw

# Bad values: usage errors.
expect_status 1 imgtool convert -m 0 src.raw x.raw
expect_eq "$(err | head -n 1)" "imgtool convert: --max-in-flight must be between 1 and 64"
expect_status 1 imgtool convert -m 65 src.raw x.raw
expect_status 1 imgtool convert -m two src.raw x.raw

# raw has no compression: one line naming the target, nothing created.
expect_status 1 imgtool convert -c -O raw src.raw x.raw
expect_eq "$(err)" "imgtool: x.raw: format 'raw' does not support compression"
[ ! -e x.raw ] || die "convert -c left x.raw behind"
ls -a | grep -q imgtool-tmp && die "convert -c left a temporary file"
cp --sparse=always ref.raw existing.raw
expect_status 1 imgtool convert -n -c src.raw existing.raw
expect_eq "$(err)" "imgtool: existing.raw: format 'raw' does not support compression"
same_content -f raw -F raw ref.raw existing.raw

# A new target is built under a temporary name; errors still name the
# target.  A 1 MiB file size limit (SIGXFSZ ignored, so writes fail with
# EFBIG) stops it while the data is copied (qcow2: the 200M disk fits in
# a few small clusters of metadata at first) or while it is created (raw).
limited() { (trap '' XFSZ; ulimit -f 1024; exec "$@"); }
expect_status 1 limited "$IMGTOOL" convert -O qcow2 src.raw new.qcow2
expect_match "$(err)" '^imgtool: new\.qcow2: write error at offset [0-9]+: File too large$'
expect_status 1 limited "$IMGTOOL" convert -m 1 -O qcow2 -o cluster_size=512 src.raw new.qcow2
expect_match "$(err)" '^imgtool: new\.qcow2: write error at offset [0-9]+: File too large$'
expect_status 1 limited "$IMGTOOL" convert -O raw src.raw new.raw
expect_eq "$(err)" "imgtool: new.raw: cannot resize to 209715200 bytes: File too large"
checks=$((checks + 1))
[ -z "$(ls -a | grep -E '^new\.')" ] || die "failed converts left files behind: $(ls -a | grep -E '^new\.')"
passed
