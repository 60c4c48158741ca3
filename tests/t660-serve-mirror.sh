# imgtool serve --mirror while clients write: in write-blocking mode,
# three qemu-io clients writing at once (seeded, overlapping, aligned and
# unaligned writes and zero writes) end with a target identical to the
# source (qemu-img compare) and clean (qemu-img check), once SIGTERM in
# READY completed the job; a client write returns only once its whole
# granules are on the target; in background mode the job converges when
# the writer stops, and the server completes it when the last client left.
. "$(dirname "$0")/serve-mirror-lib.sh"

qemu-img create -q -f qcow2 src.qcow2 16M
qemu-io -c "write -P 7 0 3M" -c "write -P 9 8M 1M" src.qcow2 >/dev/null

# 1. write-blocking, three writers at once.
serve_bg wb -e 4 -t --mirror=dst.qcow2 --copy-mode=write-blocking src.qcow2
wait_event wb ready
pids=()
for seed in 1 2 3; do
    writer_script "$seed" 150 $((16 << 20)) > w$seed.txt
    qemu-io -f raw "$(uri wb)" < w$seed.txt > w$seed.out 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "a writer failed: $(cat w*.out)"; done
grep -q "error\|fail" w1.out w2.out w3.out && die "a write failed: $(grep -h 'error\|fail' w*.out)"
expect_eq "$(server_status wb TERM)" 0 "exit status after SIGTERM while ready"
wait_event wb completed
ok qemu-img compare -f qcow2 -F qcow2 src.qcow2 dst.qcow2
ok qemu-img check dst.qcow2
ok qemu-img check src.qcow2
expect_match "$(cat "$T/wb.ev")" '"qmp-event": "BLOCK_JOB_READY"' "no QMP name in the ready event:"
# The events tell the job's size: len = offset once completed.
expect_eq "$(event_field wb completed len)" "$(event_field wb completed offset)" "completed len/offset"

# 2. Write-through: with a raw target (no cache between the job and the
# file), a client write that returned is on the target, READY or not.
qemu-img create -q -f raw dst.raw 16M
serve_bg wt -t --mirror=dst.raw --mode=existing --copy-mode=write-blocking src.qcow2
wait_event wt ready
qemu-io -f raw -c "write -P 0xab 1M 192k" "$(uri wt)" >/dev/null
ok qemu-io -f raw -U -r -c "read -P 0xab 1M 192k" dst.raw
expect_match "$(out)" "read 196608/196608" "write-blocking did not write through:"
expect_eq "$(server_status wt TERM)" 0 "exit status"
ok qemu-img compare -f qcow2 -F raw src.qcow2 dst.raw

# 3. background: one writer; when it leaves the server waits for READY,
# completes and exits 0.
rm -f dst.qcow2
serve_bg bg --mirror=dst.qcow2 --copy-mode=background src.qcow2
writer_script 4 200 $((16 << 20)) > w4.txt
qemu-io -f raw "$(uri bg)" < w4.txt > w4.out 2>&1 || die "writer failed: $(cat w4.out)"
expect_eq "$(server_status bg)" 0 "exit status once the last client left"
wait_event bg completed
ok qemu-img compare -f qcow2 -F qcow2 src.qcow2 dst.qcow2
ok qemu-img check dst.qcow2
# Remaining dirty bytes are reported and grew with the writes at times.
[ -n "$(event_field bg ready remaining)" ] || die "no remaining field: $(cat "$T/bg.ev")"
passed
