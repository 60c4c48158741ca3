# Protocol corner cases through libnbd (nbdsh's python module) and raw
# sockets, against qemu-nbd on a copy of the same image: REQ_ONE, DF,
# FAST_ZERO, NO_HOLE, CACHE, FUA, requests out of range or with flags that
# do not belong to the command, oversized reads, bad options and bad
# commands.  The answers are qemu-nbd's, except where qemu-nbd 7.2 departs
# from doc/proto.md: a write or zero write past the end gets ENOSPC ("the
# server SHOULD return ENOSPC"), and a request with a bad magic drops the
# client without a reply (qemu-nbd answers EINVAL first).
. "$(dirname "$0")/serve-lib.sh"
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import nbd" 2>/dev/null || skip "needs python3-libnbd"

qemu-img create -q -f qcow2 q.qcow2 64M
qemu-io -c "write -P 1 0 3M" q.qcow2 >/dev/null
cp q.qcow2 s.qcow2
qnbd q -t -f qcow2 q.qcow2
serve s -t -f qcow2 s.qcow2

cat > corner.py <<'PY'
import errno, socket, struct, sys, nbd

uri, sock = sys.argv[1], sys.argv[2]
out = []
def res(name, f):
    try:
        r = f()
        out.append("%s: ok%s" % (name, "" if r is None else " " + str(r)))
    except nbd.Error as ex:
        out.append("%s: %s" % (name, errno.errorcode.get(ex.errno, ex.errno)))

h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(uri)
size = h.get_size()
# REQ_ONE: exactly one extent, starting at the offset.
def req_one():
    got = []
    h.block_status(4 << 20, 0, lambda ctx, off, ents, err: got.append(len(ents) // 2) or 0,
                   flags=nbd.CMD_FLAG_REQ_ONE)
    return got
res("block-status REQ_ONE", req_one)
def req_all():
    got = []
    h.block_status(4 << 20, 0, lambda ctx, off, ents, err: got.append(list(ents)) or 0)
    return got
res("block-status", req_all)
# DF: one data chunk for the whole read.
def df_read():
    chunks = []
    h.pread_structured(1 << 20, 0, lambda buf, off, status, err: chunks.append((off, len(buf), status)) or 0,
                       flags=nbd.CMD_FLAG_DF)
    return chunks
res("read DF", df_read)
res("zero FAST_ZERO aligned", lambda: h.zero(65536, 1 << 20, flags=nbd.CMD_FLAG_FAST_ZERO))
res("zero FAST_ZERO unaligned", lambda: h.zero(4096, (1 << 20) + 512, flags=nbd.CMD_FLAG_FAST_ZERO))
res("zero NO_HOLE", lambda: h.zero(65536, 2 << 20, flags=nbd.CMD_FLAG_NO_HOLE))
res("cache", lambda: h.cache(65536, 0))
res("flush", lambda: h.flush())
res("trim", lambda: h.trim(65536, 3 << 20))
res("write FUA", lambda: h.pwrite(b"x" * 512, 0, flags=nbd.CMD_FLAG_FUA))
h.set_strict_mode(0)
res("read past end", lambda: h.pread(512, size))
res("write past end", lambda: h.pwrite(b"x" * 512, size - 256))
res("zero past end", lambda: h.zero(512, size))
res("trim past end", lambda: h.trim(512, size))
res("read unknown flag", lambda: h.pread(512, 0, flags=1 << 7))
res("read REQ_ONE flag", lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_REQ_ONE))
res("zero DF flag", lambda: h.zero(512, 0, flags=nbd.CMD_FLAG_DF))
res("read 32M+1", lambda: len(h.pread((32 << 20) + 1, 0)))
res("read 32M", lambda: len(h.pread(32 << 20, 0)))
h.shutdown()

# Raw sockets: what libnbd will not send.
def raw_connect():
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.recv(18, socket.MSG_WAITALL)
    s.sendall(struct.pack(">I", 3))
    return s
def opt(s, o, data):
    s.sendall(struct.pack(">QII", 0x49484156454F5054, o, len(data)) + data)
def opt_reply(s):
    hdr = s.recv(20, socket.MSG_WAITALL)
    if len(hdr) < 20:
        return "closed"
    magic, o, t, ln = struct.unpack(">QIII", hdr)
    s.recv(ln, socket.MSG_WAITALL) if ln else b""
    return "0x%x" % t
def go(s):
    opt(s, 7, struct.pack(">IH", 0, 0))
    while opt_reply(s) != "0x1":
        pass
def simple_reply(s):
    r = s.recv(16, socket.MSG_WAITALL)
    return "closed" if len(r) < 16 else "error %d" % struct.unpack(">IIQ", r)[1]

s = raw_connect(); opt(s, 42, b""); out.append("unknown option: " + opt_reply(s)); s.close()
s = raw_connect(); opt(s, 3, b"xx"); out.append("LIST with data: " + opt_reply(s)); s.close()
s = raw_connect(); opt(s, 7, b"\0\0\0\x10ab"); out.append("GO short name: " + opt_reply(s)); s.close()
s = raw_connect(); opt(s, 7, struct.pack(">I", 3) + b"foo" + struct.pack(">H", 0)); out.append("GO unknown export: " + opt_reply(s)); s.close()
s = raw_connect(); opt(s, 10, struct.pack(">II", 0, 0)); out.append("SET_META without structured: " + opt_reply(s)); s.close()
s = raw_connect(); opt(s, 8, b"x"); out.append("STRUCTURED_REPLY with data: " + opt_reply(s)); s.close()
s = raw_connect(); opt(s, 5, b""); out.append("STARTTLS: " + opt_reply(s)); s.close()
s = raw_connect(); go(s)
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 99, 1, 0, 0)); out.append("unknown command: " + simple_reply(s))
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 7, 2, 0, 512)); out.append("block status without contexts: " + simple_reply(s))
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 3, 0, 512)); r = simple_reply(s); s.recv(512, socket.MSG_WAITALL); out.append("read after bad commands: " + r)
s.sendall(struct.pack(">IHHQQI", 0x12345678, 0, 0, 3, 0, 512)); out.append("bad request magic: " + simple_reply(s)); s.close()
for line in out:
    print(line)
PY
ok /usr/bin/python3 corner.py "$(uri q)" "$T/q.sock"; out > q.out
ok /usr/bin/python3 corner.py "$(uri s)" "$T/s.sock"; out > s.out
sed -e 's/^write past end: EINVAL$/write past end: ENOSPC/' \
    -e 's/^zero past end: EINVAL$/zero past end: ENOSPC/' \
    -e 's/^bad request magic: error 22$/bad request magic: closed/' q.out > expected
checks=$((checks + 1))
diff expected s.out >&2 || die "imgtool serve answers differently from qemu-nbd"
# And the answers themselves, for the record.
expect_match "$(cat s.out)" "^block-status REQ_ONE: ok \[1\]$" "REQ_ONE"
expect_match "$(cat s.out)" "^read DF: ok \[\(0, 1048576, 1\)\]$" "DF read: one data chunk"
expect_match "$(cat s.out)" "^read 32M\+1: EINVAL$" "read above the maximum block size"
expect_match "$(cat s.out)" "^unknown command: error 22$" "unknown command"
expect_match "$(cat s.out)" "^GO unknown export: 0x80000006$" "NBD_REP_ERR_UNKNOWN"
stop q; stop s
qemu_clean s.qcow2
ok qemu-img compare q.qcow2 s.qcow2
passed
