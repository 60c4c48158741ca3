# Writing into NBD exports: convert -n, mirror into an existing export and
# io over unix sockets and TCP; the server's block size constraints are
# honoured (read-modify-write below the minimum, requests split above the
# maximum: nbdkit's blocksize-policy filter refuses anything else), zeroes
# and trims are sent as such, several connections with multi-conn, and a
# FLUSH reaches the server before the command reports success.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need qemu-img qemu-io qemu-nbd nbdkit nbdcopy python3
. "$here/nbd-lib.sh"

ok qemu-img create -q -f qcow2 -o cluster_size=64k src.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 192k' -c 'write -P 0x33 3M 4k' src.qcow2
ok qemu-img convert -O raw src.qcow2 src.raw

# convert -n into a writable qemu-nbd export (unix socket), then over TCP.
ok qemu-img create -q -f raw t1.raw 4M
ok qemu-io -f raw -c 'write -P 0x99 0 4M' t1.raw
start_qemu_nbd t1.sock -f raw -e 2 t1.raw; u1=$NBD_URI
ok imgtool convert -n src.qcow2 "$u1"
same_content src.raw t1.raw
ok qemu-img create -q -f raw t2.raw 4M
start_qemu_nbd_tcp -f raw t2.raw; u2=$NBD_URI
ok imgtool mirror src.qcow2 "$u2"
same_content src.raw t2.raw
# The same export as source and target is refused (no lock tells here).
expect_status 1 imgtool convert -n "$u1" "$u1"
expect_eq "$(err)" "imgtool: $u1: the target is the source ($u1)"
expect_status 1 imgtool mirror "$u1" "$u1"
expect_eq "$(err)" "imgtool: $u1: the target is the source ($u1)"

# nbdkit memory behind blocksize-policy (4k minimum, 64k maximum, errors
# for anything else) and log: every request the server saw.
start_nbdkit k.sock --filter=log --filter=blocksize-policy memory 4M logfile="$T/k.log" \
    blocksize-minimum=4096 blocksize-preferred=4096 blocksize-maximum=65536 \
    blocksize-error-policy=error
uk=$NBD_URI
ok imgtool io -c 'write -P 0x44 100 1000' -c 'write -z 8192 64k' -c 'write -z -u 131072 64k' \
    -c 'discard 262144 64k' -c 'write -P 0x55 65000 140000' -c 'read -P 0x44 100 1000' "$uk"
requests() { sed -n 's/^.* connection=[0-9]* \(Read\|Write\|Zero\|Trim\|Flush\) id=[0-9]* \([^.]*\)\.\.\.$/\1 \2/p' "$T/k.log" | sed 's/ *$//'; }
# io flushes before it exits successfully.
expect_eq "$(requests | tail -n 1)" "Flush" "last request"
ok nbdcopy --request-size=65536 "$uk" k.raw
ok qemu-io -f raw -c 'read -P 0 0 100' -c 'read -P 0x44 100 1000' -c 'read -P 0 1100 63900' \
    -c 'read -P 0x55 65000 140000' -c 'read -P 0 205000 57144' k.raw
# The unaligned write: its block read, patched and written whole; zeroes
# keep their allocation unless -u; a trim; no request over 64k.
expect_match "$(requests)" "Write offset=0x0 count=0x1000 fua=0" "read-modify-write of the first block"
expect_match "$(requests)" "Zero offset=0x2000 count=0x10000 trim=0 fua=0 fast=0" "write -z (NO_HOLE)"
expect_match "$(requests)" "Zero offset=0x20000 count=0x10000 trim=1 fua=0 fast=0" "write -z -u"
expect_match "$(requests)" "Trim offset=0x40000 count=0x10000" "discard"
expect_eq "$(requests | grep -E '^(Read|Write)' | grep -vcE 'count=0x([0-9a-f]{1,4}|10000)( |$)')" 0 "requests above the 64k maximum"

# A copy over 4 connections (nbdkit memory advertises multi-conn), split at
# the 64k maximum, flushed before success.
: > "$T/k.log"
ok imgtool convert -n --connections=4 src.qcow2 "$uk"
expect_eq "$(grep -c ' Connect ' "$T/k.log")" 4 "connections"
expect_eq "$(requests | tail -n 1)" "Flush" "last request of convert"
ok nbdcopy --request-size=65536 "$uk" k2.raw
same_content src.raw k2.raw
expect_status 1 imgtool convert -n --connections=17 src.qcow2 "$uk"
expect_match "$(err)" "--connections must be from 1 to 16"
# qemu-nbd without multi-conn (one client at a time): one connection.
ok imgtool io -c 'write -z 0 4M' "$u2"
ok imgtool convert -n --connections=4 src.qcow2 "$u2"
same_content src.raw t2.raw
passed
