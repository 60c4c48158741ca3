# convert -C as qemu-img's: data goes from the source's host file to the
# target's in the kernel (copy_file_range), copied as it is (no zero
# detection), zero runs as usual; into a qcow2 target the data lands in
# clusters allocated as a write allocates them.  Where it cannot be
# offloaded (a compressed cluster; a piece smaller than the target's
# cluster) the copy goes through memory, with the same result.
# What qemu-img refuses with -C (-c, -S, --salvage) is refused in its words.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io strace

# copy_file_range calls made by "imgtool convert $@".
offloads() {
    strace -f -qq -e trace=copy_file_range -o cfr.log "$IMGTOOL" convert "$@" ||
        die "imgtool convert $* failed"
    grep -c '^[0-9]* *copy_file_range(' cfr.log
}

ok qemu-img create -q -f raw z.raw 1M
ok qemu-io -f raw -c 'write -P 9 0 4k' -c 'write -P 0 4k 60k' -c 'write -P 9 64k 4k' z.raw
ok qemu-img create -q -f qcow2 s.qcow2 1M
ok qemu-io -c 'write -P 1 0 64k' -c 'write -z 128k 64k' -c 'write -P 0 256k 64k' s.qcow2
ok qemu-img convert -c -O qcow2 s.qcow2 c.qcow2

for src in z.raw s.qcow2 c.qcow2; do
    for fmt in raw qcow2; do
        ok qemu-img convert -C -O $fmt $src q.$fmt
        n=$(offloads -C -O $fmt $src i.$fmt)
        case $src/$fmt in
        c.qcow2/*) expect_eq "$n" 0 "$src -> $fmt: copied through memory" ;;
        *) [ "$n" -gt 0 ] || die "$src -> $fmt: no copy_file_range" ;;
        esac
        same_content -f $fmt -F $fmt q.$fmt i.$fmt
        expect_eq "$(map_alloc $fmt i.$fmt)" "$(map_alloc $fmt q.$fmt)" "-C $src -> $fmt: allocation"
        [ $fmt = qcow2 ] && qemu_clean i.qcow2
        rm -f q.$fmt i.$fmt
    done
done
# The zeroes written as data in s.qcow2 stay data (no zero detection).
n=$(offloads -C -O raw s.qcow2 i.raw)
expect_eq "$(map_alloc raw i.raw | sed -n 3p)" "262144 65536 false true" "-C copies data as it is"
# qcow2 targets: small clusters take the pieces whole; clusters larger
# than the source's pieces (64k) cannot, so the copy goes through memory.
[ "$(offloads -C -O qcow2 -o cluster_size=4k s.qcow2 i4k.qcow2)" -gt 0 ] ||
    die "-C into 4k clusters: no copy_file_range"
expect_eq "$(offloads -C -O qcow2 -o cluster_size=1M s.qcow2 i1m.qcow2)" 0 \
    "-C into 1M clusters: copied through memory"
for t in i4k.qcow2 i1m.qcow2; do
    same_content s.qcow2 $t
    qemu_clean $t
done
# Without -C nothing is offloaded.
rm -f i.raw
expect_eq "$(offloads -O raw s.qcow2 i.raw)" 0 "copy_file_range without -C"
# -n into an existing file.
truncate -s 1M n.raw
[ "$(offloads -C -n -O raw s.qcow2 n.raw)" -gt 0 ] || die "-C -n: no copy_file_range"
same_content -f qcow2 -F raw s.qcow2 n.raw

for opts in "-c -O qcow2" "-S 4k -O raw" "-S 0 -O raw" "--salvage -O raw"; do
    expect_status 1 qemu-img convert -C $opts s.qcow2 x.img
    q=$(err)
    expect_status 1 imgtool convert -C $opts s.qcow2 x.img
    expect_eq "$(err | head -n 1)" "${q/qemu-img:/imgtool convert:}" "-C $opts"
    [ ! -e x.img ] || die "-C $opts created the target"
done
passed
