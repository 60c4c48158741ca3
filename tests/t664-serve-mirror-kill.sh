# kill -9 of imgtool serve --mirror --sync=bitmap in the middle of the job,
# while clients wrote: the image is consistent (qemu-img check), the
# job's bitmap is consistent too (it is written ahead: stored before a
# write it records reaches the disk) and marks what was still to copy plus
# every client write, so the next run resumes and produces a correct diff;
# the image's other bitmaps are reported inconsistent, as after a crash of
# qemu.
. "$(dirname "$0")/serve-mirror-lib.sh"

qemu-img create -q -f qcow2 src.qcow2 16M
qemu-io -c "write -P 1 0 16M" src.qcow2 >/dev/null
qemu-img convert -f qcow2 -O qcow2 src.qcow2 base.qcow2
qemu-img bitmap --add src.qcow2 b0
qemu-img bitmap --add src.qcow2 other
qemu-io -c "write -P 2 1M 64k" -c "write -z 4M 128k" -c "write -P 3 100k 5k" \
    src.qcow2 >/dev/null

# A slow job (--speed), clients writing new granules meanwhile, kill -9.
serve_bg k -t --mirror=diff.qcow2 --sync=bitmap --mirror-bitmap=b0 -O qcow2 --speed=16k \
    src.qcow2
ok qemu-io -f raw -c "write -P 4 8M 64k" -c "write -P 5 12M 7k" -c "write -z 2M 4k" "$(uri k)"
kill -9 "$(cat "$T/k.pid")"
server_status k >/dev/null
grep -q '"event": "ready"' "$T/k.ev" && die "the job was ready before kill -9 (make it slower)"
ok qemu-img check src.qcow2
ok imgtool bitmap --list src.qcow2
expect_match "$(out)" '^b0 +65536  auto +' "b0 after kill -9:"
expect_match "$(out)" '^other +65536  in-use,auto' "the other bitmap after kill -9:"
ok imgtool bitmap --dump src.qcow2 b0
expect_eq "$(out | tr -s ' ' | tr '\n' ' ')" \
    "Offset Length 0x10000 0x10000 0x100000 0x10000 0x200000 0x10000 0x400000 0x20000 0x800000 0x10000 0xc00000 0x10000 " \
    "b0 after kill -9"

# The next run resumes: the diff, rebased onto the previous full copy,
# reads as the source.
imgtool bitmap --remove src.qcow2 other
serve_bg r -t --mirror=diff.qcow2 --sync=bitmap --mirror-bitmap=b0 -O qcow2 src.qcow2
wait_event r ready
expect_eq "$(server_status r TERM)" 0 "exit status of the resumed job"
ok qemu-img check src.qcow2
ok qemu-img check diff.qcow2
ok qemu-img rebase -u -f qcow2 -b base.qcow2 -F qcow2 diff.qcow2
ok qemu-img compare -f qcow2 -F qcow2 src.qcow2 diff.qcow2
ok imgtool bitmap --list src.qcow2
expect_match "$(out)" '^b0 +65536  auto +0$' "b0 after the resumed job:"
passed
