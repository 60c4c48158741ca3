# Pull-mode backup from an NBD export with a dirty bitmap (qemu-nbd -B):
# bitmap --list/--dump show the server's bitmap; export --sync=incremental
# reads the dirty extents from qemu:dirty-bitmap:NAME and makes the same
# qcow2 as the offline export of the image; the bitmap is never changed,
# the summary says so, and options that would change it are refused.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need qemu-img qemu-io qemu-nbd python3
. "$here/nbd-lib.sh"

ok qemu-img create -q -f qcow2 disk.qcow2 8M
ok qemu-io -f qcow2 -c 'write -P 0x11 0 2M' disk.qcow2
ok imgtool export --sync=full --bitmap=b0 disk.qcow2 full.qcow2
# The guest writes after the full backup: b0 records them.
ok qemu-io -f qcow2 -c 'write -P 0x22 64k 4k' -c 'write -P 0x33 3M 192k' -c 'write -z 7M 64k' \
    disk.qcow2
ok cp disk.qcow2 offline.qcow2
start_qemu_nbd pull.sock -r -f qcow2 -B b0 disk.qcow2; u=$NBD_URI

ok imgtool bitmap --list "$u"
expect_eq "$(out)" "$(printf '%-16s %12s  %-12s %16s\n%-16s %12s  %-12s %16s' NAME GRANULARITY FLAGS 'DIRTY BYTES' b0 65536 server 327680)" "bitmap --list"
ok imgtool bitmap --dump --output=json "$u" b0
expect_eq "$(out)" "$(nbdinfo --map=qemu:dirty-bitmap:b0 --json "$u" | python3 -c '
import json, sys
runs = [e for e in json.load(sys.stdin) if e["type"] & 1]
print("[" + ",\n".join("{ \"start\": %d, \"length\": %d}" % (e["offset"], e["length"]) for e in runs) + "]")')" "bitmap --dump against nbdinfo"

ok imgtool export --sync=incremental --bitmap=b0 -b full.qcow2 "$u" pull.qcow2
pull_summary=$(out)
expect_eq "${pull_summary#*, backed by }" "full.qcow2; the server's bitmap 'b0' is left unchanged (the server manages it)" "summary"
same_content disk.qcow2 pull.qcow2
qemu_clean pull.qcow2
# The offline export of the same image makes the same diff image.
ok imgtool export --sync=incremental --bitmap=b0 -b full.qcow2 offline.qcow2 offline-inc.qcow2
offline_summary=$(out)
written() { sed -n 's/.*, \([0-9.]* [KMG]*i*B\) written in .*/\1/p' <<<"$1"; }
expect_eq "$(written "$pull_summary")" "$(written "$offline_summary")" "bytes written by the pull and offline backups"
nooffset() { qemu-img map --output=json "$1" | sed 's/, "offset": [0-9]*//'; }
expect_eq "$(nooffset pull.qcow2)" "$(nooffset offline-inc.qcow2)" "allocation of the pull backup"
ok qemu-img compare -U pull.qcow2 offline-inc.qcow2
# The server's bitmap is as it was (qemu-nbd -B exports it read-only).
ok imgtool bitmap --list "$u"
expect_match "$(out)" "^b0 +65536  server +327680$" "b0 after the backup"

# A second pull with the JSON summary; the chain checks apply (a backing
# backup of another size is refused).
ok imgtool export --sync=incremental --bitmap=b0 -b pull.qcow2 --output=json "$u" pull2.qcow2
expect_match "$(out)" '"server-bitmap-unchanged": true' "JSON summary"
ok qemu-img create -q -f qcow2 small.qcow2 4M
expect_status 1 imgtool export --sync=incremental --bitmap=b0 -b small.qcow2 "$u" bad.qcow2
expect_eq "$(err)" "imgtool: small.qcow2: size 4194304 differs from $u (8388608 bytes): a backup chain needs images of one size"
# Whatever would change the server's bitmaps is refused.
expect_status 1 imgtool export --sync=incremental --bitmap=b0 --checkpoint=c1 -b full.qcow2 "$u" x.qcow2
expect_eq "$(err)" "imgtool: $u: --checkpoint would add a bitmap on the server, and imgtool never changes the server's bitmaps (create checkpoints there, e.g. virsh checkpoint-create or QMP block-dirty-bitmap-add)"
expect_status 1 imgtool export --sync=full --bitmap=b0 "$u" x.qcow2
expect_eq "$(err)" "imgtool: $u: bitmap 'b0' would be created or reset on the server, and imgtool never changes the server's bitmaps (start it there; copy without --bitmap)"
expect_status 1 imgtool mirror --sync=bitmap --bitmap=b0 --bitmap-mode=on-success "$u" x.qcow2
expect_eq "$(err)" "imgtool: $u: bitmap 'b0' is the server's and imgtool never changes it, so its bits cannot be cleared (use --bitmap-mode=never)"
expect_status 1 imgtool bitmap --remove "$u" b0
expect_eq "$(err)" "imgtool: $u: the server's bitmaps are its own: imgtool never changes them (use the server's tools, e.g. QMP block-dirty-bitmap-add)"
expect_status 1 imgtool export --sync=incremental --bitmap=nope -b full.qcow2 "$u" x.qcow2
expect_eq "$(err)" "imgtool: full.qcow2: a backup following bitmap 'b0', not 'nope' (or --force)"
[ -z "$(ls x.qcow2* bad.qcow2* 2>/dev/null)" ] || die "refused backups left files: $(ls x.qcow2* bad.qcow2*)"
checks=$((checks + 1))
# mirror --sync=bitmap from the URI into the full copy: just the dirty
# extents, bitmap kept.
ok qemu-img convert -O raw full.qcow2 mb.raw
ok imgtool mirror --sync=bitmap --bitmap=b0 "$u" mb.raw
expect_match "$(out)" " 256 KiB written \(sync=bitmap\); the server's bitmap 'b0' is left unchanged \(the server manages it\)$" "mirror summary"
same_content disk.qcow2 mb.raw
# A full pull.
ok imgtool export --sync=full "$u" fullpull.qcow2
same_content disk.qcow2 fullpull.qcow2
passed
