# convert -n into an NBD export without a backing file zeroes the export
# first with NBD_CMD_FLAG_FAST_ZERO where the server offers it, and then
# writes only the source's data; a server that would be slow refuses the
# fast zero (ENOTSUP) and the copy zeroes the source's zero runs itself.
# Against nbdkit (memory, nozero fastzeromode=slow, log), qemu-nbd and
# qemu-storage-daemon.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need qemu-img qemu-io qemu-nbd nbdkit nbdcopy qemu-storage-daemon
. "$here/nbd-lib.sh"

ok qemu-img create -q -f qcow2 src.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 192k' -c 'write -z 2M 64k' \
    src.qcow2
ok qemu-img convert -O raw src.qcow2 src.raw
# requests LOG: the requests the server saw, without ids and timestamps.
requests() {
    sed -n 's/^.* connection=[0-9]* \(Read\|Write\|Zero\|Trim\) id=[0-9]* \([^.]*\)\.\.\.$/\1 \2/p' \
        "$1" | sed 's/ *$//'
}
# replies LOG: the Zero replies, as "return=... [error=...]".
zero_replies() { sed -n 's/^.* \.\.\.Zero id=[0-9]* \(.*\)$/\1/p' "$1"; }

# nbdkit memory zeroes fast: one fast zero of the whole export, then the
# data writes only (the read is the raw probe of block 0 before writing it).
start_nbdkit k.sock --filter=log memory 4M logfile="$T/k.log"; uk=$NBD_URI
ok imgtool io -c 'write -P 0x99 0 4M' "$uk"
: > "$T/k.log"
ok imgtool convert -n src.qcow2 "$uk"
expect_eq "$(requests "$T/k.log" | grep -v '^Read' | head -n 1)" \
    "Zero offset=0x0 count=0x400000 trim=1 fua=0 fast=1" "the first request"
expect_eq "$(requests "$T/k.log" | grep -v '^Read' | sort)" "Write offset=0x0 count=0x10000 fua=0
Write offset=0x100000 count=0x30000 fua=0
Zero offset=0x0 count=0x400000 trim=1 fua=0 fast=1" "requests into a fast-zeroing export"
ok nbdcopy "$uk" k.raw
same_content src.raw k.raw

# nbdkit nozero fastzeromode=slow: fast zeroes are advertised and refused;
# the copy then zeroes what the export holds beyond the source's data.
start_nbdkit s.sock --filter=log --filter=nozero memory 4M logfile="$T/s.log" zeromode=plugin \
    fastzeromode=slow
us=$NBD_URI
ok imgtool io -c 'write -P 0x99 0 4M' "$us"
: > "$T/s.log"
ok imgtool convert -n src.qcow2 "$us"
expect_eq "$(requests "$T/s.log" | grep '^Zero' | head -n 1)" \
    "Zero offset=0x0 count=0x400000 trim=1 fua=0 fast=1" "the fast zero attempt"
expect_eq "$(zero_replies "$T/s.log" | head -n 1)" "return=-1 error=ENOTSUP" "the slow server's answer"
expect_eq "$(requests "$T/s.log" | grep '^Zero' | grep -c 'fast=0')" 4 "zero runs written after it"
ok nbdcopy "$us" s.raw
same_content src.raw s.raw

# A server that offers no fast zero gets none: nozero fastzeromode=none.
start_nbdkit n.sock --filter=log --filter=nozero memory 4M logfile="$T/n.log" zeromode=plugin \
    fastzeromode=none
un=$NBD_URI
ok imgtool io -c 'write -P 0x99 0 4M' "$un"
ok imgtool convert -n src.qcow2 "$un"
expect_eq "$(requests "$T/n.log" | grep -c 'fast=1')" 0 "fast zeroes sent to a server without them"
ok nbdcopy "$un" n.raw
same_content src.raw n.raw

# qemu-nbd and qemu-storage-daemon exports of raw files full of 0x99.
ok qemu-img create -q -f raw q.raw 4M
ok qemu-io -f raw -c 'write -P 0x99 0 4M' q.raw
start_qemu_nbd q.sock -f raw q.raw; uq=$NBD_URI
ok imgtool convert -n src.qcow2 "$uq"
same_content src.raw q.raw
ok qemu-img create -q -f raw d.raw 4M
ok qemu-io -f raw -c 'write -P 0x99 0 4M' d.raw
qemu-storage-daemon --blockdev driver=file,filename="$T/d.raw",node-name=d \
    --nbd-server addr.type=unix,addr.path="$T/d.sock" \
    --export type=nbd,id=e,node-name=d,name=d,writable=on >"$T/qsd.log" 2>&1 &
NBD_PIDS+=($!)
ud=$(unix_uri "$T/d.sock" d)
wait_nbd "$ud"
ok imgtool convert -n src.qcow2 "$ud"
same_content src.raw d.raw
passed
