# qcow2 write path: the same random sequence of writes, zero writes (with
# and without unmap) and discards applied by qemu-io to one image and by
# imgtool io to another gives the same contents, and qemu-img check finds
# imgtool's image clean (and imgtool check says what qemu-img check says),
# for v2/v3, cluster sizes 512 B .. 2 MiB, refcount widths 1/16/64, extended
# L2, with and without a backing file.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

SIZE=$((8 << 20))
# ops SEED N: N qemu-io commands (fixed seed), as -c arguments in OPS.
ops() {
    RANDOM=$1
    OPS=()
    local i kind off len
    for ((i = 0; i < $2; i++)); do
        kind=$((RANDOM % 10))
        if ((RANDOM % 4 == 0)); then     # any byte offset, else 512-aligned
            off=$(( (RANDOM * 32768 + RANDOM) % SIZE ))
        else
            off=$(( ((RANDOM * 32768 + RANDOM) % (SIZE / 512)) * 512 ))
        fi
        len=$(( (RANDOM % 4 == 0 ? RANDOM * 16 : RANDOM % 70000) + 1 ))
        ((off + len > SIZE)) && len=$((SIZE - off))
        case $kind in
        0|1|2|3|4) OPS+=(-c "write -P $((RANDOM % 255 + 1)) $off $len") ;;
        5|6) OPS+=(-c "write -z $off $len") ;;
        7) OPS+=(-c "write -z -u $off $len") ;;
        *) OPS+=(-c "discard $off $len") ;;
        esac
    done
}

ok qemu-img create -f qcow2 base.qcow2 $SIZE
ok qemu-io -f qcow2 -c "write -P 0xbb 0 $SIZE" -c 'write -z 1M 1M' base.qcow2

seed=1
for spec in "compat=0.10,cluster_size=512" "compat=0.10,cluster_size=64k" \
            "compat=0.10,cluster_size=2M" "cluster_size=512,refcount_bits=1" \
            "cluster_size=4k,refcount_bits=16" "cluster_size=64k,refcount_bits=64" \
            "cluster_size=2M,refcount_bits=16" "cluster_size=64k,extended_l2=on" \
            "cluster_size=16k,extended_l2=on,refcount_bits=1" "cluster_size=2M,extended_l2=on"; do
    for backing in none base; do
        seed=$((seed + 1))
        rm -f ref.qcow2 mine.qcow2
        bopt=()
        [ $backing = base ] && bopt=(-b base.qcow2 -F qcow2)
        ok qemu-img create -f qcow2 -o "$spec" "${bopt[@]}" ref.qcow2 $SIZE
        ok imgtool create -f qcow2 -o "$spec" "${bopt[@]}" mine.qcow2 $SIZE
        qemu_clean mine.qcow2
        ops $seed 300
        ok qemu-io -f qcow2 "${OPS[@]}" ref.qcow2
        ok imgtool io -f qcow2 "${OPS[@]}" mine.qcow2
        checks=$((checks + 1))
        qemu-img compare -U ref.qcow2 mine.qcow2 >/dev/null 2>&1 ||
            die "$spec backing=$backing seed=$seed: contents differ: $(qemu-img compare ref.qcow2 mine.qcow2 2>&1)"
        qemu_clean mine.qcow2
        ok imgtool check mine.qcow2
        expect_eq "$(out)" "$(qemu-img check -U mine.qcow2)" "$spec backing=$backing: imgtool check"
        ok imgtool compare ref.qcow2 mine.qcow2
        # qemu-io can keep writing imgtool's image.
        ok qemu-io -f qcow2 -c 'write -P 0x5a 100k 300k' -c 'write -z 2M 70k' mine.qcow2
        ok qemu-io -f qcow2 -c 'write -P 0x5a 100k 300k' -c 'write -z 2M 70k' ref.qcow2
        same_content ref.qcow2 mine.qcow2
        qemu_clean mine.qcow2
    done
done
passed
