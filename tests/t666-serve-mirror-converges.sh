# imgtool serve --mirror in write-blocking mode converges under a writer
# that never pauses: READY comes while qemu-img bench keeps writing through
# the export (a job that waited for a target flush with no client write
# during it never got there, and once the writer stopped right after a
# flush it waited for ever at 0 bytes remaining); then SIGTERM completes
# the job and the target equals the source.  The first pass is slowed by
# --speed so that the writer is already running when it ends.
. "$(dirname "$0")/serve-mirror-lib.sh"
need qemu-img

qemu-img create -q -f qcow2 src.qcow2 32M
qemu-io -c "write -P 7 0 24M" src.qcow2 >/dev/null

serve_bg wb -t --mirror=dst.qcow2 --copy-mode=write-blocking --speed=8M src.qcow2
qemu-img bench -w -f raw -c 100000000 -d 4 -s 4k -S 12k --pattern=0x5a "$(uri wb)" \
    >bench.out 2>&1 &
writer=$!
wait_event wb ready
kill -0 "$writer" 2>/dev/null || die "the writer stopped before READY: $(cat bench.out)"
kill "$writer"; wait "$writer" 2>/dev/null || true
expect_eq "$(server_status wb TERM)" 0 "exit status after SIGTERM while ready"
wait_event wb completed
ok qemu-img compare -f qcow2 -F qcow2 src.qcow2 dst.qcow2
ok qemu-img check dst.qcow2
ok qemu-img check src.qcow2
passed
