# --connections=N on mirror and export as on convert: up to N connections
# to an NBD export that advertises multi-conn (source or target), one to a
# server that does not; refused where no image is an NBD URI, and outside
# 1 to 16.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need qemu-img qemu-io qemu-nbd nbdkit
. "$here/nbd-lib.sh"

ok qemu-img create -q -f qcow2 src.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 192k' -c 'write -P 0x33 3M 4k' \
    src.qcow2
ok qemu-img convert -O raw src.qcow2 src.raw

# nbdkit memory advertises multi-conn; the log filter records every
# connection that completes its handshake.
start_nbdkit k.sock --filter=log memory 4M logfile="$T/k.log"; uk=$NBD_URI
ok imgtool convert -n src.raw "$uk"
connections() { grep -c ' Connect ' "$T/k.log"; }

: > "$T/k.log"
ok imgtool export --connections=4 --sync=full "$uk" full.qcow2
expect_eq "$(connections)" 4 "export's connections to the source"
same_content src.raw full.qcow2
qemu_clean full.qcow2

: > "$T/k.log"
ok imgtool mirror --connections=3 "$uk" m.qcow2
expect_eq "$(connections)" 3 "mirror's connections to the source"
same_content src.raw m.qcow2

# Into the export: mirror with the URI as target.
ok imgtool io -c 'write -P 0x99 0 4M' "$uk"
: > "$T/k.log"
ok imgtool mirror --connections=2 src.qcow2 "$uk"
expect_eq "$(connections)" 2 "mirror's connections to the target"
ok nbdcopy "$uk" back.raw
same_content src.raw back.raw

# qemu-nbd without -r does not advertise multi-conn: one connection, and
# the copy is still right.
ok qemu-img create -q -f raw t.raw 4M
start_qemu_nbd t.sock -f raw t.raw; ut=$NBD_URI
ok imgtool mirror --connections=4 src.qcow2 "$ut"
same_content src.raw t.raw

# An incremental pull over several connections (qemu-nbd -r -B offers
# multi-conn) equals the offline one.
ok qemu-img create -q -f qcow2 disk.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 0x44 0 1M' disk.qcow2
ok imgtool export --sync=full --bitmap=b0 disk.qcow2 base.qcow2
ok qemu-io -f qcow2 -c 'write -P 0x55 128k 64k' -c 'write -P 0x66 2M 128k' disk.qcow2
start_qemu_nbd d.sock -r -e 4 -f qcow2 -B b0 disk.qcow2; ud=$NBD_URI
ok imgtool export --connections=4 --sync=incremental --bitmap=b0 -b base.qcow2 "$ud" inc.qcow2
same_content disk.qcow2 inc.qcow2
qemu_clean inc.qcow2

# Files only: nothing to open several connections to.
expect_status 1 imgtool mirror --connections=2 src.qcow2 x.qcow2
expect_eq "$(err | head -n 1)" "imgtool mirror: --connections=2 needs an NBD URI (nbd://, nbd+unix://) as source or target"
expect_status 1 imgtool export --connections=2 --sync=full src.qcow2 x.qcow2
expect_match "$(err)" "^imgtool export: --connections=2 needs an NBD URI"
expect_status 1 imgtool convert --connections=2 src.qcow2 x.raw
expect_match "$(err)" "^imgtool convert: --connections=2 needs an NBD URI"
[ ! -e x.qcow2 ] && [ ! -e x.raw ] || die "a refused command created its target"
expect_status 1 imgtool export --connections=17 --sync=full "$uk" x.qcow2
expect_match "$(err)" "--connections must be from 1 to 16"
expect_status 1 imgtool mirror --connections=0 "$uk" x.qcow2
expect_match "$(err)" "--connections must be from 1 to 16"
passed
