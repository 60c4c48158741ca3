# imgtool serve --mirror --sync=top of a qcow2 overlay, in background mode,
# slowed by --speed so that three seeded writers overwrite ranges while the
# background pass is still copying them: the new target is backed by the
# overlay's backing file, holds only the top layer's clusters and what
# the clients wrote, and reads as the source (qemu-img compare) once the
# job, ready after the writers stopped, completed on SIGTERM.
. "$(dirname "$0")/serve-mirror-lib.sh"

qemu-img create -q -f qcow2 base.qcow2 8M
qemu-io -c "write -P 1 0 8M" base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -c "write -P 2 0 4M" top.qcow2 >/dev/null

serve_bg t -e 4 -t --mirror=dst.qcow2 --sync=top --speed=2M top.qcow2
pids=()
for seed in 11 12 13; do
    writer_script "$seed" 60 $((8 << 20)) > w$seed.txt
    qemu-io -f raw "$(uri t)" < w$seed.txt > w$seed.out 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "a writer failed: $(cat w*.out)"; done
grep -q "error\|fail" w1*.out && die "a write failed: $(grep -h 'error\|fail' w1*.out)"
wait_event t ready
expect_eq "$(server_status t TERM)" 0 "exit status"
ok qemu-img info --output=json dst.qcow2
expect_match "$(out)" '"backing-filename": ".*base.qcow2"' "the target's backing file:"
ok qemu-img compare -f qcow2 -F qcow2 top.qcow2 dst.qcow2
ok qemu-img check dst.qcow2
ok qemu-img check top.qcow2
passed
