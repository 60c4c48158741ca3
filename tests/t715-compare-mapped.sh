# imgtool compare maps the data of raw files and plain qcow2 clusters
# instead of reading it (blk_map_run), except with -T none (O_DIRECT) and
# -U (another process may truncate the file): all three ways give
# qemu-img compare's answer, at the edges of its 1 MiB segments, in the
# last byte of files whose size is not a multiple of the page size, after
# a hole, in data a backing file holds, and where a backing file ends
# before the image.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

fmt() { case $1 in *.raw) echo raw ;; *) echo qcow2 ;; esac; }
# same_answer A B WHAT: imgtool, mapped or not, says what qemu-img says.
same_answer() {
    local a=$1 b=$2 what=$3 qrc=0 q mode
    q=$(qemu-img compare -f $(fmt $a) -F $(fmt $b) $a $b 2>&1) || qrc=$?
    for mode in "" "-T none" "-U"; do
        expect_status $qrc imgtool compare $mode -f $(fmt $a) -F $(fmt $b) $a $b
        expect_eq "$(out)" "$q" "$what ($a $b${mode:+ $mode})"
    done
}

# Data, a 1 MiB hole, data; 3 MiB + 1001 bytes: the last page is partial.
size=$(((3 << 20) + 1001))
truncate -s $size base.raw
ok qemu-io -f raw -c 'write -P 7 0 1M' -c "write -P 8 2M $((size - (2 << 20)))" base.raw
ok qemu-img convert -f raw -O qcow2 base.raw base.qcow2
same_answer base.raw base.qcow2 "identical"
for off in 0 4095 4096 $(((1 << 20) - 1)) $((2 << 20)) $(((2 << 20) + 1)) \
           $(((3 << 20) - 1)) $((3 << 20)) $((size - 1)); do
    cp base.raw d.raw
    ok qemu-io -f raw -c "write -P 9 $off 1" d.raw
    ok qemu-img convert -f raw -O qcow2 d.raw d.qcow2
    same_answer base.raw d.raw "byte at $off"
    same_answer d.qcow2 base.raw "byte at $off"
    same_answer base.qcow2 d.qcow2 "byte at $off"
done
# A byte written in the hole: data against zeroes.
cp base.raw h.raw
ok qemu-io -f raw -c "write -P 9 $(((1 << 20) + 77)) 1" h.raw
same_answer base.qcow2 h.raw "byte in the hole"

# The data of an overlay's unwritten part comes from its backing file
# (mapped from the backing file's clusters).
ok qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 top.qcow2
same_answer top.qcow2 base.raw "overlay"
ok qemu-img convert -f raw -O qcow2 d.raw dbase.qcow2
ok qemu-img create -q -f qcow2 -F qcow2 -b dbase.qcow2 dtop.qcow2
same_answer dtop.qcow2 base.raw "overlay, difference in the backing file"

# A raw file shorter than its image: the missing end reads as zeroes.
truncate -s 3M short.raw
ok qemu-io -f raw -c 'write -P 7 0 1M' -c "write -P 8 2M 1M" short.raw
ok qemu-img create -q -f qcow2 -F raw -b short.raw over.qcow2 $size
same_answer over.qcow2 base.raw "backing file shorter than the image"
passed
