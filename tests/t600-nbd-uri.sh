# NBD URIs wherever an image goes: info and map print what qemu-img prints
# for the same URI (unix socket and TCP, with and without export names),
# and bad URIs, TLS, qcow2 over NBD, missing exports and dead servers are
# one-line errors with exit status 1.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need qemu-img qemu-io qemu-nbd python3
. "$here/nbd-lib.sh"

ok qemu-img create -q -f raw disk.raw 4M
ok qemu-io -f raw -c 'write -P 0x11 0 64k' -c 'write -P 0x22 1M 192k' -c 'write -z 2M 64k' disk.raw
ok qemu-img create -q -f qcow2 -o cluster_size=64k base.qcow2 4M
ok qemu-io -f qcow2 -c 'write -P 0x33 512k 128k' base.qcow2
ok qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
ok qemu-io -f qcow2 -c 'write -P 0x44 0 64k' -c 'write -z 3M 64k' top.qcow2

start_qemu_nbd raw.sock -r -f raw disk.raw;                  u_raw=$NBD_URI
start_qemu_nbd named.sock -r -f raw -x disk0 disk.raw;       u_named=$NBD_URI
start_qemu_nbd chain.sock -r -f qcow2 -x top top.qcow2;      u_chain=$NBD_URI
start_qemu_nbd_tcp -r -f raw -x tcpdisk disk.raw;            u_tcp=$NBD_URI
u_tcp2=${u_tcp/nbd:/nbd+tcp:}

for u in "$u_raw" "$u_named" "$u_chain" "$u_tcp" "$u_tcp2"; do
    ok imgtool info "$u"
    expect_eq "$(out)" "$(qemu-img info "$u")" "info $u"
    ok imgtool info --output=json "$u"
    expect_eq "$(out)" "$(qemu-img info --output=json "$u")" "info --output=json $u"
    ok imgtool map --output=json "$u"
    expect_eq "$(out)" "$(qemu-img map --output=json "$u")" "map --output=json $u"
    ok imgtool map "$u"
    expect_eq "$(out)" "$(qemu-img map "$u")" "map $u"
done
# The extents, in nbdinfo's words too: zeroes and data as the server says.
ok imgtool map --output=json "$u_chain"
expect_eq "$(out | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    print(e["start"], e["length"], (0 if e["data"] else 1) | (2 if e["zero"] else 0))')" \
    "$(nbdinfo --map "$u_chain" | awk '{print $1, $2, $3}')" "map against nbdinfo --map"
# compare and io over both transports.
for u in "$u_raw" "$u_tcp"; do
    ok imgtool compare "$u" disk.raw
    expect_eq "$(out)" "Images are identical." "compare $u"
    expect_status 1 imgtool compare "$u" top.qcow2
    expect_match "$(out)" "^Content mismatch at offset 0!$" "compare $u top.qcow2"
    ok imgtool io -c 'read -P 0x22 1M 192k' -c 'read -P 0 2M 64k' "$u"
done
# The default port is 10809 (spelled out as QEMU does).
expect_status 1 imgtool info nbd://127.0.0.1/x
expect_eq "$(err)" "imgtool: nbd://127.0.0.1/x: cannot connect to 127.0.0.1 port 10809: Connection refused"

# Errors.
expect_status 1 imgtool info "nbd+unix:///nope?socket=$T/raw.sock"
expect_eq "$(err)" "imgtool: nbd+unix:///nope?socket=$T/raw.sock: the server has no export 'nope': export 'nope' not present"
expect_status 1 imgtool info nbds://127.0.0.1/x
expect_match "$(err)" "^imgtool: nbds://127.0.0.1/x: NBD over TLS \(nbds://\) is not supported: imgtool has no TLS library; bridge it with a local proxy"
expect_status 1 imgtool info -f qcow2 "$u_chain"
expect_eq "$(err)" "imgtool: $u_chain: format 'qcow2' over NBD is not supported: NBD exports are opened as raw (let the server open the qcow2 image, e.g. qemu-nbd -f qcow2)"
expect_status 1 imgtool info "nbd+unix:///?socket=$T/none.sock"
expect_eq "$(err)" "imgtool: nbd+unix:///?socket=$T/none.sock: cannot connect to $T/none.sock: No such file or directory"
for bad in "nbd+unix:///x" "nbd+unix://host/x?socket=/s" "nbd://:10809/x" "nbd://h:99999/x" \
           "nbd://h:12a/x" "nbd://h/x?socket=/s" "nbd+unix:///x?socket=/s&tls=on" "nbd://[::1/x" \
           "nbd+vsock://1/x" "nbd:/x" "nbd://h/a%zz" "nbd://h/a%00b"; do
    expect_status 1 imgtool info "$bad"
    expect_match "$(err)" "^imgtool: .*(invalid NBD URI|unsupported NBD URI scheme)" "error for $bad"
    expect_eq "$(err | wc -l)" 1 "one line for $bad"
done
expect_status 1 imgtool info "nbd+unix:///x"
expect_eq "$(err)" "imgtool: nbd+unix:///x: invalid NBD URI: nbd+unix:// needs ?socket=PATH"
expect_status 1 imgtool info "nbd+vsock://1/x"
expect_eq "$(err)" "imgtool: nbd+vsock://1/x: unsupported NBD URI scheme 'nbd+vsock' (use nbd://, nbd+tcp:// or nbd+unix://)"
# A read-only export refuses writes with the server's answer.
expect_status 1 imgtool io -c 'write 0 512' "$u_raw"
expect_eq "$(err)" "imgtool: $u_raw: the export is read-only"
# Not a server at all: a plain listening socket that says something else.
python3 - "$T/junk.sock" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept(); c.sendall(b"HTTP/1.0 200 OK\r\n\r\n"); c.recv(100)
PY
NBD_PIDS+=($!)
for i in $(seq 100); do [ -S "$T/junk.sock" ] && break; sleep 0.05; done
expect_status 1 imgtool info "nbd+unix:///?socket=$T/junk.sock"
expect_eq "$(err)" "imgtool: nbd+unix:///?socket=$T/junk.sock: not an NBD server (bad magic 0x485454502f312e30)"
passed
