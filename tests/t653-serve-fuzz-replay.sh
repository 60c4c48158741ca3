# The NBD server's fuzz target (tests/fuzz/fuzz_nbd_server.c) replayed over
# client byte streams made here: whole sessions (flags, options, requests
# with their payloads, each kind of command, good and bad), then truncated
# and bit-flipped copies.  Every input must end without a crash, a hang
# or an ASan report (the replay runs built both ways by make check).
. "$(dirname "$0")/lib.sh"
need python3
[ -n "${FUZZ_REPLAY:-}" ] || skip "FUZZ_REPLAY not set (run through make check)"
bins=$(tr ' ' '\n' <<<"$FUZZ_REPLAY" | grep 'replay_fuzz_nbd_server$' || true)
[ -n "$bins" ] || die "no replay_fuzz_nbd_server in FUZZ_REPLAY"

mkdir inputs
python3 - inputs <<'PY'
import os, random, struct, sys
random.seed(653)
d = sys.argv[1]
IHAVEOPT, REQ = 0x49484156454F5054, 0x25609513
def opt(o, data=b''):
    return struct.pack('>QII', IHAVEOPT, o, len(data)) + data
def s32(s):
    return struct.pack('>I', len(s)) + s
def meta(o, names):
    return opt(o, s32(b'') + struct.pack('>I', len(names)) + b''.join(s32(n) for n in names))
def go(name=b'', infos=(1, 2, 3)):
    return opt(7, s32(name) + struct.pack('>H', len(infos)) + b''.join(struct.pack('>H', i) for i in infos))
def req(t, off, ln, flags=0, cookie=1, payload=b''):
    return struct.pack('>IHHQQI', REQ, flags, t, cookie, off, ln) + payload
hand = struct.pack('>I', 3) + opt(8) + meta(9, []) + meta(10, [b'base:allocation', b'qemu:allocation-depth', b'qemu:dirty-bitmap:x']) + opt(3) + opt(6, s32(b'ro') + b'\0\0') + go()
reqs = [req(1, 4096, 512, payload=b'\xab' * 512), req(0, 0, 8192, cookie=2), req(0, 0, 4096, 4, 3),
        req(7, 0, 1 << 20, 0, 4), req(7, 0, 1 << 20, 8, 5), req(6, 65536, 65536, 2, 6),
        req(6, 3, 5, 16, 7), req(4, 0, 65536, 1, 8), req(3, 0, 0, 0, 9), req(5, 0, 4096, 0, 10),
        req(0, (1 << 20) - 1, 2, 0, 11), req(99, 0, 0, 0, 12), req(0, 0, 1 << 30, 0, 13),
        req(1, 1 << 40, 4, payload=b'abcd', cookie=14), req(0, 0, 512, 0x80, 15)]
sessions = [hand + b''.join(reqs) + req(2, 0, 0),
            hand + b''.join(reqs[:3]),
            struct.pack('>I', 1) + opt(1, b''),                                  # EXPORT_NAME ""
            struct.pack('>I', 3) + opt(1, b'ro') + req(1, 0, 4, payload=b'xxxx') + req(0, 0, 4),
            struct.pack('>I', 3) + opt(2),                                       # ABORT
            struct.pack('>I', 3) + opt(42, b'x' * 100) + opt(5) + go(b'nope') + go(),
            struct.pack('>I', 0xff) + go(),                                      # bad client flags
            struct.pack('>I', 3) + struct.pack('>QII', IHAVEOPT, 7, 0xffffffff), # option too long
            struct.pack('>I', 3) + go() + req(1, 0, 0xffffffff),                # write too long
            struct.pack('>I', 3) + opt(10, b'\0\0\0\0\xff\xff\xff\xff'),         # meta: huge count
            struct.pack('>I', 3) + go() + struct.pack('>IHHQQI', 0xdead, 0, 0, 0, 0, 0)]
n = 0
for s in sessions:
    open(os.path.join(d, 'session%d' % n), 'wb').write(s); n += 1
    for cut in sorted(random.sample(range(len(s)), min(len(s), 12))):
        open(os.path.join(d, 'cut%d' % n), 'wb').write(s[:cut]); n += 1
    for i in range(40):
        b = bytearray(s)
        for _ in range(random.randint(1, 6)):
            b[random.randrange(len(b))] ^= 1 << random.randrange(8)
        open(os.path.join(d, 'flip%d' % n), 'wb').write(bytes(b)); n += 1
PY
# One replay run per session's inputs (the program takes many files).
replay_inputs "$bins"
passed
