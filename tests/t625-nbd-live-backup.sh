# The live-VM pull backup recipe in qemu-storage-daemon: the disk has a
# writable export (the "guest" writes through it) and bitmap b0; at the
# backup's point in time a transaction freezes b0 and starts a fleecing
# node (blockdev-backup sync=none into a qcow2 overlay), exported with b0.
# imgtool export --sync=incremental reads the fleecing export while the
# guest keeps writing; the backup equals qemu-img convert of the fleecing
# export, and b0 is as the server left it.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need qemu-img qemu-io qemu-storage-daemon python3
. "$here/nbd-lib.sh"

qmp() { python3 "$here/nbd/qmp.py" "$T/qmp.sock" "$@"; }
ok qemu-img create -q -f qcow2 disk.qcow2 8M
ok qemu-io -f qcow2 -c 'write -P 0x11 0 2M' disk.qcow2
ok qemu-img create -q -f qcow2 -b "$T/disk.qcow2" -F qcow2 fleece.qcow2
qemu-storage-daemon --blockdev driver=file,node-name=file0,filename=disk.qcow2 \
    --blockdev driver=qcow2,node-name=disk,file=file0 \
    --nbd-server addr.type=unix,addr.path="$T/nbd.sock" \
    --chardev socket,id=qmp,path="$T/qmp.sock",server=on,wait=off --monitor chardev=qmp \
    --export type=nbd,id=rw,node-name=disk,name=disk-rw,writable=on >qsd.log 2>&1 &
NBD_PIDS+=($!)
rw=$(unix_uri "$T/nbd.sock" disk-rw)
wait_nbd "$rw"
ok qmp '{"execute": "block-dirty-bitmap-add", "arguments": {"node": "disk", "name": "b0"}}'
# The full backup, through the export (b0 counts from here).
ok imgtool export --sync=full "$rw" full.qcow2
# The guest writes; then the point in time of tonight's backup.
ok imgtool io -c 'write -P 0x22 64k 4k' -c 'write -P 0x33 3M 128k' -c 'write -z 1M 64k' "$rw"
ok qmp '{"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "fleece",
         "file": {"driver": "file", "filename": "'"$T"'/fleece.qcow2"}, "backing": "disk"}}' \
       '{"execute": "transaction", "arguments": {"actions": [
         {"type": "block-dirty-bitmap-disable", "data": {"node": "disk", "name": "b0"}},
         {"type": "blockdev-backup", "data": {"device": "disk", "target": "fleece",
          "sync": "none", "job-id": "fleecing"}}]}}' \
       '{"execute": "block-export-add", "arguments": {"type": "nbd", "id": "fl",
         "node-name": "fleece", "name": "fleece", "bitmaps": ["b0"]}}'
fl=$(unix_uri "$T/nbd.sock" fleece)
bitmaps='{"execute": "query-named-block-nodes", "arguments": {"flat": true}}'
ok qmp "$bitmaps"
before=$(out | python3 -c 'import json,sys; print([b for n in json.load(sys.stdin) for b in n.get("dirty-bitmaps", []) if b.get("name") == "b0"])')
# The guest goes on writing through the other export during the backup.
( for i in $(seq 20); do
      "$IMGTOOL" io -c "write -P 0x$((40 + i % 10)) $((i * 192))k 64k" "$rw" >/dev/null || exit 1
  done ) &
writer=$!
ok imgtool export --sync=incremental --bitmap=b0 -b full.qcow2 "$fl" inc.qcow2
wait "$writer" || die "the guest's writes failed"
expect_match "$(out)" "; the server's bitmap 'b0' is left unchanged \(the server manages it\)$" "summary"
ok qemu-img convert -O raw "$fl" pit.raw
same_content inc.qcow2 pit.raw
qemu_clean inc.qcow2
expect_status 1 qemu-img compare -U inc.qcow2 "$rw"
ok qmp "$bitmaps"
expect_eq "$(out | python3 -c 'import json,sys; print([b for n in json.load(sys.stdin) for b in n.get("dirty-bitmaps", []) if b.get("name") == "b0"])')" "$before" "b0 after the backup"
# Done: the recipe drops the fleecing export and node.
ok qmp '{"execute": "block-export-del", "arguments": {"id": "fl"}}' \
       '{"execute": "block-job-cancel", "arguments": {"device": "fleecing"}}'
ok qmp '{"execute": "quit"}'
passed
