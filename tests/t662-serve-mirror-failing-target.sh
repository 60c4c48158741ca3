# imgtool serve --mirror to a target that fails (nbdkit's error filter as
# an NBD target: every write fails with ENOSPC, as a full disk would;
# then a target that starts failing once the job is ready, in
# write-blocking mode): a "failed" event naming the error, the server goes
# on serving (client writes succeed on the source), the source and its
# bitmap are as they were, and the exit status is 1.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/serve-mirror-lib.sh"
. "$here/nbd-lib.sh"
trap 'stop_all_servers; nbd_cleanup' EXIT

qemu-img create -q -f qcow2 src.qcow2 4M
qemu-io -c "write -P 1 0 4M" src.qcow2 >/dev/null
qemu-img bitmap --add src.qcow2 b0
qemu-io -c "write -P 2 1M 64k" -c "write -z 3M 128k" src.qcow2 >/dev/null
cp src.qcow2 before.qcow2
ok imgtool bitmap --dump src.qcow2 b0
bitmap_before=$(out)

# 1. Every write fails: the job fails at once.
start_nbdkit full.sock --filter=error memory 4M error=ENOSPC error-pwrite-rate=100% \
    error-zero-rate=100%
serve_bg f -t --mirror="$NBD_URI" --sync=bitmap --mirror-bitmap=b0 src.qcow2
wait_event f failed
expect_match "$(grep '"event": "failed"' "$T/f.ev")" '"error": ".*No space left on device' \
    "the failed event does not name the error:"
expect_match "$(grep '"event": "failed"' "$T/f.ev")" '"qmp-event": "BLOCK_JOB_COMPLETED"' \
    "the failed event's QMP name:"
# Still serving the source.
ok qemu-io -f raw -c "read -P 2 1M 64k" "$(uri f)"
expect_eq "$(server_status f TERM)" 1 "exit status after a failed mirror"
expect_match "$(cat "$T/f.err")" "mirror to nbd.*failed: .*No space left on device" "stderr:"
ok qemu-img compare -f qcow2 -F qcow2 before.qcow2 src.qcow2
ok qemu-img check src.qcow2
ok imgtool bitmap --dump src.qcow2 b0
expect_eq "$(out)" "$bitmap_before" "the bitmap after the failed job"

# 2. The target fails only once the job is ready (error-file): the next
# client write cannot be written through; the client's write still
# succeeds on the source.
start_nbdkit late.sock --filter=error memory 4M error=EIO error-rate=100% \
    error-file="$T/inject"
serve_bg l -t --mirror="$NBD_URI" --copy-mode=write-blocking src.qcow2
wait_event l ready
touch "$T/inject"
ok qemu-io -f raw -c "write -P 9 2M 64k" "$(uri l)"
wait_event l failed
ok qemu-io -f raw -c "read -P 9 2M 64k" "$(uri l)"
expect_eq "$(server_status l TERM)" 1 "exit status after a failed write-through"
ok qemu-io -c "read -P 9 2M 64k" src.qcow2
ok qemu-img check src.qcow2
ok imgtool bitmap --dump src.qcow2 b0
[ "$(out)" != "$bitmap_before" ] || die "b0 did not record the client write"
passed
