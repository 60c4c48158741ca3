# More real clients of imgtool serve: TCP on 127.0.0.1, nbdcopy with four
# connections both ways (a read-only export shared by four clients offers
# multi-conn), and qemu-storage-daemon with driver=nbd mirroring out of a
# writable export while qemu-io writes through a second connection; every
# result checked with qemu-img compare and check.
src=$(cd "$(dirname "$0")" && pwd)
. "$src/serve-lib.sh"
need nbdcopy qemu-storage-daemon
[ -x /usr/bin/python3 ] || skip "needs /usr/bin/python3"

qemu-img create -q -f qcow2 disk.qcow2 32M
qemu-io -c "write -P 1 0 4M" -c "write -P 2 10M 3M" -c "write -z 20M 1M" disk.qcow2 >/dev/null

# TCP, loopback only, on a port the kernel picked free just before.
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$IMGTOOL" serve --fork --pid-file "$T/tcp.pid" -r -b 127.0.0.1 -p "$port" disk.qcow2 ||
    die "serve over TCP did not start"
servers+=("$T/tcp.pid")
ok qemu-img convert -f raw -O raw "nbd://127.0.0.1:$port" tcp.raw
same_content -f qcow2 disk.qcow2 -F raw tcp.raw
stop tcp

# nbdcopy -C 4 out of a shared read-only export, and into a writable one.
serve r -t -r -e 4 disk.qcow2
ok nbdinfo --can multi-conn "$(uri r)"
ok nbdcopy -C 4 "$(uri r)" out.raw
same_content -f qcow2 disk.qcow2 -F raw out.raw
stop r
qemu-img create -q -f qcow2 in.qcow2 32M
serve w -t -e 4 in.qcow2
ok nbdcopy -C 4 out.raw "$(uri w)"
stop w
same_content -f raw out.raw -F qcow2 in.qcow2
qemu_clean in.qcow2

# qemu-storage-daemon as the client: blockdev-mirror out of the export.
serve m -t -e 2 disk.qcow2
qemu-img create -q -f qcow2 mirror.qcow2 32M
rm -f qmp.sock
qemu-storage-daemon \
    --blockdev driver=nbd,server.type=unix,server.path="$T/m.sock",export=,node-name=src \
    --blockdev driver=file,filename=mirror.qcow2,node-name=tf \
    --blockdev driver=qcow2,file=tf,node-name=tgt \
    --chardev socket,path=qmp.sock,server=on,wait=off,id=qmp \
    --monitor chardev=qmp &
qsd=$!
echo $qsd > "$T/qsd.pid"; servers+=("$T/qsd.pid")
ok qemu-io -f raw -c "write -P 3 30M 1M" "$(uri m)"
ok /usr/bin/python3 "$src/bench/qmp-job.py" "$T/qmp.sock" blockdev-mirror \
    '{"job-id": "j", "device": "src", "target": "tgt", "sync": "full"}'
wait $qsd
stop m
same_content -f qcow2 disk.qcow2 -F qcow2 mirror.qcow2
qemu_clean mirror.qcow2
qemu_clean disk.qcow2
ok qemu-io -f qcow2 -c "read -P 3 30M 1M" mirror.qcow2
passed
