# Size changes never expose backing data and sizes are QEMU's (issue 12,
# item 3): growing an overlay zeroes the new area as qemu-img resize does
# (zero clusters; a compat=0.10 image is refused, as by qemu-img), commit
# into a smaller base zero-fills its grown part, sizes are rounded up to
# whole sectors as qemu-img create rounds them, qcow2 refuses a new size
# that is not a multiple of 512, and a crash at any write of a resize
# leaves the old or the new size with every kept byte intact.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

nooff() { sed 's/, "offset": [0-9]*//'; }
vsize() { qemu-img info -U --output=json "$@" | sed -n 's/^    "virtual-size": \([0-9]*\),$/\1/p'; }

# Sizes that are not a multiple of 512: what qemu-img create stores.
head -c 1001 /dev/urandom > odd.raw
for f in qcow2 raw; do
    ok imgtool create -q -f $f i.$f 1001
    qemu-img create -q -f $f q.$f 1001
    expect_eq "$(vsize i.$f)" "$(vsize q.$f)" "create -f $f 1001"
    expect_eq "$(stat -c %s i.raw 2>/dev/null || echo -)" "$(stat -c %s q.raw 2>/dev/null || echo -)"
done
expect_eq "$(vsize i.qcow2)" 1024
ok imgtool create -q -f qcow2 -b odd.raw -F raw ib.qcow2
qemu-img create -q -f qcow2 -b odd.raw -F raw qb.qcow2
expect_eq "$(vsize ib.qcow2)" "$(vsize qb.qcow2)" "create -b odd.raw"
expect_eq "$(vsize ib.qcow2)" 1024
ok imgtool info --output=json odd.raw
expect_match "$(out)" "\"virtual-size\": $(vsize -f raw odd.raw),"
ok imgtool convert -O qcow2 odd.raw ic.qcow2
expect_eq "$(vsize ic.qcow2)" 1024
same_content -f raw -F qcow2 odd.raw ic.qcow2

# resize to a size that is not a multiple of 512: qcow2 refuses, raw takes it.
expect_status 1 imgtool resize i.qcow2 1000001
expect_eq "$(err)" "imgtool: i.qcow2: The new size must be a multiple of 512"
expect_status 1 qemu-img resize q.qcow2 1000001
expect_status 1 imgtool resize i.qcow2 +1
expect_eq "$(vsize i.qcow2)" 1024
cp q.raw q2.raw
ok imgtool resize -q i.raw 2001
qemu-img resize -q -f raw q2.raw 2001
expect_eq "$(stat -c %s i.raw)" "$(stat -c %s q2.raw)" "raw resize 2001"
expect_eq "$(vsize -f raw i.raw)" "$(vsize -f raw q2.raw)"

# Growing an overlay: the new area reads zeroes, mapped as qemu-img's.
qemu-img create -q -f raw base.raw 4M
ok qemu-io -f raw -c 'write -P 0xaa 0 4M' base.raw
for o in cluster_size=65536 cluster_size=4096 extended_l2=on; do
    for t in i q; do
        qemu-img create -q -f qcow2 -o $o -b base.raw -F raw $t.ov.qcow2 1000448
    done
    ok imgtool resize -q i.ov.qcow2 3M
    qemu-img resize -q q.ov.qcow2 3M
    expect_eq "$(qemu-img map --output=json i.ov.qcow2 | nooff)" \
              "$(qemu-img map --output=json q.ov.qcow2 | nooff)" "map after resize ($o)"
    ok qemu-io -c 'read -P 0xaa 0 1000448' -c 'read -P 0 1000448 2145280' i.ov.qcow2
    qemu_clean i.ov.qcow2
    rm -f ?.ov.qcow2
done
# Over a backing file shorter than the old size nothing needs zeroing.
qemu-img create -q -f qcow2 -b odd.raw -F raw i.short.qcow2 64k
qemu-img create -q -f qcow2 -b odd.raw -F raw q.short.qcow2 64k
ok imgtool resize -q i.short.qcow2 1M
qemu-img resize -q q.short.qcow2 1M
expect_eq "$(qemu-img map --output=json i.short.qcow2)" "$(qemu-img map --output=json q.short.qcow2)"
# compat=0.10 has no zero clusters: refused like qemu-img, nothing changed.
qemu-img create -q -f qcow2 -o compat=0.10 -b base.raw -F raw v2.qcow2 1M
cp v2.qcow2 v2.orig
expect_status 1 imgtool resize v2.qcow2 2M
expect_match "$(err)" "^imgtool: v2.qcow2: cannot grow a compat=0.10 image over a larger backing file"
expect_status 1 qemu-img resize v2.qcow2 2M
cmp -s v2.qcow2 v2.orig || die "v2.qcow2 changed"

# commit into a base smaller than the top, base backed by a larger file:
# the top reads the same afterwards, base mapped as by qemu-img commit.
for t in i q; do
    qemu-img create -q -f raw $t.bb.raw 4M
    ok qemu-io -f raw -c 'write -P 0xbb 0 4M' $t.bb.raw
    qemu-img create -q -f qcow2 -b $t.bb.raw -F raw $t.base.qcow2 1M
    qemu-img create -q -f qcow2 -b $t.base.qcow2 -F qcow2 $t.top.qcow2 3M
    ok qemu-io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 2M 64k' $t.top.qcow2
done
qemu-img convert -O raw i.top.qcow2 before.raw
ok imgtool commit -q i.top.qcow2
qemu-img commit -q q.top.qcow2
same_content -f qcow2 -F raw i.top.qcow2 before.raw
expect_eq "$(qemu-img map --output=json i.base.qcow2 | nooff)" \
          "$(qemu-img map --output=json q.base.qcow2 | nooff)" "base map after commit"
qemu_clean i.base.qcow2

# A crash at every write of a resize: old or new size, kept bytes intact,
# the grown area zero, qemu-img check without corruption (leaks allowed).
hdr_size() { od -An -tu8 --endian=big -j24 -N8 "$1" | tr -d ' '; }
crash_resize() {    # SETUP-COMMAND... -- RESIZE-ARGS (the last one the new size in bytes)
    local setup=() n status size chk
    while [ "$1" != -- ]; do setup+=("$1"); shift; done; shift
    rm -f c.qcow2; "${setup[@]}" || die "setup ${setup[*]}"
    mv c.qcow2 c.pristine
    local old new=${!#}; old=$(hdr_size c.pristine)
    qemu-img convert -U -O raw c.pristine c.before
    for n in $(seq 0 400); do
        cp c.pristine c.qcow2
        status=0
        IMGTOOL_FAULT_AFTER_WRITES=$n "$IMGTOOL" resize -q c.qcow2 "$@" 2>/dev/null || status=$?
        [ "$status" = 0 ] || [ "$status" = 137 ] || die "resize $* at write $n exited $status"
        chk=0; qemu-img check c.qcow2 >c.check 2>&1 || chk=$?
        [ "$chk" = 0 ] || [ "$chk" = 3 ] || die "resize $* crashed at write $n: $(cat c.check)"
        size=$(hdr_size c.qcow2)
        [ "$size" = "$old" ] || [ "$size" = "$new" ] || die "resize $* at write $n: size $size"
        qemu-img convert -U -O raw c.qcow2 c.after
        # Kept: what lies below both sizes (a shrink drops the rest first).
        cmp -s -n $(( new < old ? new : old )) c.before c.after ||
            die "resize $* at write $n: kept bytes changed"
        if [ "$size" -gt "$old" ]; then
            cmp -s -i "$old:0" -n $((size - old)) c.after /dev/zero ||
                die "resize $* at write $n: grown area is not zero"
        fi
        checks=$((checks + 1))
        if [ "$status" = 0 ]; then
            [ "$size" = "$new" ] || die "resize $* succeeded without the size change"
            return
        fi
    done
    die "resize $* did not finish in 400 writes"
}
ovl() { qemu-img create -q -f qcow2 -o "$1" -b base.raw -F raw c.qcow2 "$2" &&
        qemu-io -c 'write -P 0x33 4096 8k' c.qcow2 >/dev/null; }
plain() { qemu-img create -q -f qcow2 -o "$1" c.qcow2 "$2" &&
          qemu-io -c "write -P 0x44 0 $2" c.qcow2 >/dev/null; }
crash_resize ovl cluster_size=4096 1000448 -- 3145728
crash_resize ovl cluster_size=512 2031616 -- 2162688    # a new L1 table
crash_resize ovl extended_l2=on 1000448 -- 3145728
crash_resize plain cluster_size=512 2031616 -- 2162688
crash_resize plain cluster_size=4096 3145728 -- --shrink 1000448
passed
