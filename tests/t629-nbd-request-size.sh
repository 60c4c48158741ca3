# Reads and writes reach an NBD server in requests of at most 512 KiB,
# whatever the copy's buffer size (--buf-size), or in whole preferred
# blocks where the server prefers larger ones, never above its maximum;
# the copies are exact.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need qemu-img qemu-io nbdkit
. "$here/nbd-lib.sh"

ok qemu-img create -q -f raw src.raw 8M
ok qemu-io -f raw -c 'write -P 0x11 0 3M' -c 'write -P 0x22 4M 1M' -c 'write -P 0x33 7M 4k' src.raw

# The sizes of the Read or Write requests the server saw, largest first.
sizes() {
    sed -n "s/^.* connection=[0-9]* $1 id=[0-9]* offset=0x[0-9a-f]* count=\\(0x[0-9a-f]*\\).*/\\1/p" \
        "$T/k.log" | sort -u | while read -r c; do echo $((c)); done | sort -rn
}
largest() { sizes "$1" | head -n 1; }

# nbdkit memory without block size constraints (32 MiB maximum).
start_nbdkit k.sock --filter=log memory 8M logfile="$T/k.log"; uk=$NBD_URI
: > "$T/k.log"
ok imgtool convert -n src.raw "$uk"
expect_eq "$(largest Write)" 524288 "largest write of convert into the export"
: > "$T/k.log"
ok imgtool convert -n --buf-size=4M src.raw "$uk"
expect_eq "$(largest Write)" 524288 "largest write with --buf-size=4M"
: > "$T/k.log"
ok imgtool convert "$uk" out.raw
expect_eq "$(largest Read)" 524288 "largest read of convert from the export"
same_content src.raw out.raw
: > "$T/k.log"
ok imgtool mirror --buf-size=8M -O raw "$uk" m.raw
expect_eq "$(largest Read)" 524288 "largest read with mirror --buf-size=8M"
same_content src.raw m.raw

# A server that prefers 1 MiB blocks (4 MiB at most) gets whole ones from
# a copy with buffers that large.
start_nbdkit p.sock --filter=log --filter=blocksize-policy memory 8M logfile="$T/k.log" \
    blocksize-minimum=4096 blocksize-preferred=1048576 blocksize-maximum=4194304 \
    blocksize-error-policy=error
up=$NBD_URI
: > "$T/k.log"
ok imgtool convert -n --buf-size=4M src.raw "$up"
expect_eq "$(largest Write)" 1048576 "largest write with a 1 MiB preferred block"
: > "$T/k.log"
ok imgtool convert --buf-size=4M "$up" out2.raw
expect_eq "$(largest Read)" 1048576 "largest read with a 1 MiB preferred block"
same_content src.raw out2.raw
passed
