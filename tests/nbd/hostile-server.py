#!/usr/bin/env python3
# A deliberately broken NBD server for tests/t615: a correct fixed-newstyle
# handshake (structured replies, base:allocation as context 1, a 1 MiB
# export), then for each request the reply that SCENARIO says.
import socket, struct, sys

path, scenario = sys.argv[1], sys.argv[2]
SIZE = 1 << 20
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(4)

def recv(c, n):
    b = b''
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d:
            raise SystemExit(0)
        b += d
    return b

def rep(c, opt, typ, data=b''):
    c.sendall(struct.pack('>QIII', 0x3e889045565a9, opt, typ, len(data)) + data)

def handshake(c):
    c.sendall(b'NBDMAGICIHAVEOPT' + struct.pack('>H', 3))
    recv(c, 4)
    while True:
        _, opt, ln = struct.unpack('>QII', recv(c, 16))
        data = recv(c, ln)
        if opt == 8:                                    # STRUCTURED_REPLY
            rep(c, opt, 1)
        elif opt == 10:                                 # SET_META_CONTEXT
            rep(c, opt, 4, struct.pack('>I', 1) + b'base:allocation')
            rep(c, opt, 1)
        elif opt == 7:                                  # GO
            rep(c, opt, 3, struct.pack('>HQH', 0, SIZE, 1 | 4))
            rep(c, opt, 1)
            return
        else:
            rep(c, opt, (1 << 31) | 1)

def chunk(c, flags, typ, cookie, payload):
    c.sendall(struct.pack('>IHHQI', 0x668e33ef, flags, typ, cookie, len(payload)) + payload)

def serve(c):
    handshake(c)
    while True:
        _, flags, typ, cookie, off, ln = struct.unpack('>IHHQQI', recv(c, 28))
        if typ == 2:
            return
        if typ == 7:                                    # BLOCK_STATUS
            if scenario == 'status-past-end':
                chunk(c, 1, 5, cookie, struct.pack('>III', 1, SIZE + 512, 0))
            elif scenario == 'status-bad-context':
                chunk(c, 1, 5, cookie, struct.pack('>III', 9, ln, 0))
            else:
                chunk(c, 1, 5, cookie, struct.pack('>III', 1, ln, 0))
            continue
        if typ != 0:
            c.sendall(struct.pack('>IIQ', 0x67446698, 0, cookie))
            continue
        if scenario == 'bad-cookie':
            chunk(c, 1, 1, cookie + 12345, struct.pack('>Q', off) + bytes(ln))
        elif scenario == 'outside':
            chunk(c, 1, 1, cookie, struct.pack('>Q', off + 1) + bytes(ln))
        elif scenario == 'short':
            chunk(c, 1, 1, cookie, struct.pack('>Q', off) + bytes(ln // 2))
        elif scenario == 'overlap':
            chunk(c, 0, 1, cookie, struct.pack('>Q', off) + bytes(ln // 2))
            chunk(c, 1, 1, cookie, struct.pack('>Q', off) + bytes(ln // 2))
        elif scenario == 'bad-magic':
            c.sendall(struct.pack('>IIQ', 0x12345678, 0, cookie))
        elif scenario == 'huge-chunk':
            c.sendall(struct.pack('>IHHQI', 0x668e33ef, 1, 1, cookie, 0xfffffff0))
        elif scenario == 'simple-read':
            c.sendall(struct.pack('>IIQ', 0x67446698, 0, cookie) + bytes(ln))
        elif scenario == 'error-chunk':
            msg = b'disk on fire'
            chunk(c, 1, 32770, cookie, struct.pack('>IH', 5, len(msg)) + msg + struct.pack('>Q', off))
        elif scenario == 'hang':
            pass
        else:
            chunk(c, 1, 1, cookie, struct.pack('>Q', off) + bytes(ln))

while True:
    c, _ = srv.accept()
    try:
        serve(c)
    except (SystemExit, ConnectionError):
        pass
    c.close()
