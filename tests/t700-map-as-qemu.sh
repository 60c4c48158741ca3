# imgtool map prints what qemu-img map prints, byte for byte, with the same
# exit status: a compressed image (human: qemu-img's error, as the data has
# no host offset), metadata preallocation (the data clusters lie in holes
# of the host file, so they read as zero and humans do not see them), a
# mixed image and chains, one of small clusters under large ones.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# same_map IMG [ARGS...]: stdout, stderr (tool name aside) and exit status
# of imgtool map equal qemu-img map's, in both output formats.
same_map() {
    local img=$1 o; shift
    for o in human json; do
        qrc=0 irc=0
        qemu-img map --output=$o "$@" "$img" > q.out 2> q.err || qrc=$?
        imgtool map --output=$o "$@" "$img" > i.out 2> i.err || irc=$?
        expect_eq "$irc" "$qrc" "$img $o $*: exit status"
        expect_eq "$(cat i.out)" "$(cat q.out)" "$img $o $*: output"
        expect_eq "$(sed 's/^imgtool: //' i.err)" "$(sed 's/^qemu-img: //' q.err)" "$img $o $*: errors"
    done
}

ok qemu-img create -f qcow2 src.qcow2 4M
ok qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 2M 64k' src.qcow2
ok qemu-img convert -c -O qcow2 src.qcow2 comp.qcow2
same_map comp.qcow2
expect_status 1 imgtool map comp.qcow2
# Only the part before the first compressed cluster: human mode works.
same_map comp.qcow2 -s 1M -l 1M
# Part compressed, part not: the uncompressed run is printed first.
cp comp.qcow2 mixed.qcow2
ok qemu-io -c 'write -P 3 3M 128k' mixed.qcow2
same_map mixed.qcow2 -s 1M

for spec in "preallocation=metadata" "preallocation=metadata,cluster_size=4k" \
            "preallocation=metadata,extended_l2=on" "preallocation=metadata,compat=0.10"; do
    rm -f p.qcow2
    ok qemu-img create -f qcow2 -o $spec p.qcow2 3M
    same_map p.qcow2
    # Data written into a preallocated image: that part is data again.
    ok qemu-io -c 'write -P 5 64k 192k' p.qcow2
    same_map p.qcow2
done

# A chain: a top written partly, over a base with preallocated metadata.
rm -f p.qcow2
ok qemu-img create -f qcow2 -o preallocation=metadata p.qcow2 2M
ok qemu-io -c 'write -P 7 1M 64k' p.qcow2
ok qemu-img create -f qcow2 -b p.qcow2 -F qcow2 top.qcow2
ok qemu-io -c 'write -P 8 0 64k' top.qcow2
same_map top.qcow2

# The chain the block status cache is for: an extended-L2 top with 512 KiB
# clusters, few writes at subcluster granularity, over a base with
# 512-byte clusters (a run of the top spans many runs of the base, each
# answered from the cached run of the top).  Also through compare.
ok qemu-img create -q -f raw chain.raw 24M
ok qemu-io -f raw -c 'write -P 1 0 5M' -c 'write -P 2 9M 3M' -c 'write -P 3 20M 1M' chain.raw
ok qemu-img convert -f raw -O qcow2 -o cluster_size=512 chain.raw small.qcow2
ok qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=512k -b small.qcow2 -F qcow2 \
    ext.qcow2
ok qemu-io -c 'write -P 4 16k 16k' -c 'write -P 5 10M 48k' -c 'write -z 21M 16k' ext.qcow2
same_map ext.qcow2
same_map ext.qcow2 -s 9M -l 6M
expect_status 1 imgtool compare small.qcow2 ext.qcow2
expect_eq "$(out)" "$(qemu-img compare small.qcow2 ext.qcow2)" "compare over the chain"
expect_status 1 imgtool compare -F raw ext.qcow2 chain.raw
expect_eq "$(out)" "$(qemu-img compare -F raw ext.qcow2 chain.raw)" "compare over the chain"
passed
