# imgtool serve --on-complete=switch while the export is busiest: nbdcopy
# -C 4 (four connections, many requests in flight each) writes the whole
# disk, over and over, while `imgtool job complete` arrives; the switch
# quiesces every connection and resumes them on the target.  nbdcopy sees
# no error; what it wrote last is what the target holds (qemu-img compare),
# the target is clean (qemu-img check) and, for --sync=top, keeps its
# backing file: the base's data reads through the target's own chain.
. "$(dirname "$0")/serve-mirror-lib.sh"
need nbdcopy

# --sync=top: the source's base is the target's base too.
ok qemu-img create -f qcow2 base.qcow2 64M
ok qemu-io -c 'write -P 3 0 64M' base.qcow2
ok qemu-img create -f qcow2 -b base.qcow2 -F qcow2 src.qcow2
head -c $((48 << 20)) /dev/urandom >data1.raw
head -c $((48 << 20)) /dev/urandom >data2.raw

serve_bg s -t -e 4 --control="$T/c.sock" --mirror="$T/tgt.qcow2" --sync=top \
    --copy-mode=write-blocking --on-complete=switch src.qcow2
wait_event s ready
# The first 48 MiB are nbdcopy's: data1 and data2 in turn until the
# switch is done, then data1 and data2 once more (data2 last); the rest
# stays the base's.
copy() { nbdcopy -C 4 --requests=16 --request-size=262144 "$1" "$(uri s)"; }
( while [ ! -e switched ]; do copy data1.raw && copy data2.raw || exit 1; done
  copy data1.raw && copy data2.raw ) >copy.out 2>&1 &
copy=$!
sleep 0.5
ok imgtool job complete --control="$T/c.sock"
wait_event s switched
touch switched
wait "$copy" || die "nbdcopy failed across the switch: $(cat copy.out)"
expect_eq "$(server_status s TERM)" 0 "exit status after SIGTERM"

ok qemu-img info --output=json tgt.qcow2
expect_match "$(out | tr -d ' \n')" '"backing-filename":"'"$T"'/base.qcow2"' "the target's backing file"
ok qemu-io -c 'read -P 3 48M 16M' tgt.qcow2
ok qemu-img convert -O raw tgt.qcow2 tgt.raw
ok cmp -n $((48 << 20)) data2.raw tgt.raw
qemu_clean tgt.qcow2
qemu_clean src.qcow2
passed
