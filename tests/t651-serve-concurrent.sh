# Overlapping writes, zero writes, trims and reads from four NBD
# connections at once, each with many requests in flight, on a qcow2 with
# small clusters: the block layer serialises them (blockdev.h "Threads"),
# so what the disk holds at the end is what some serial order leaves (a
# model checks every 8-byte word), every read returned plausible data, and
# qemu-img check finds the image clean.
. "$(dirname "$0")/serve-lib.sh"
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import nbd" 2>/dev/null || skip "needs python3-libnbd"

qemu-img create -q -f qcow2 -o cluster_size=4k disk.qcow2 1M
# --cache=unsafe: no fdatasync between metadata writes, so that the
# requests' windows for racing are not hidden behind flushes.
serve s -f qcow2 -e 4 --discard=unmap --cache=unsafe disk.qcow2

cat > hammer.py <<'PY'
import random, select, struct, sys, nbd

uri = sys.argv[1]
CLUSTER, AREA = 4096, 24 * 4096
WORDS = AREA // 8
CONNS, OPS, DEPTH = 4, 1500, 8
rnd = random.Random(20261201)
ops = [None]            # op id -> (kind, off, len); ids start at 1
bad_reads = 0

def random_op():
    r = rnd.randrange(10)
    kind = 'w' if r < 4 else 'z' if r < 6 else 't' if r < 7 else 'r'
    if kind == 't':
        off = rnd.randrange(24) * CLUSTER
        ln = (1 + rnd.randrange(3)) * CLUSTER
    else:
        off = rnd.randrange(WORDS) * 8
        ln = (1 + rnd.randrange(3 * CLUSTER // 8)) * 8
    return kind, off, min(ln, AREA - off)

def tags(op_id, off, ln):
    return b''.join(struct.pack('>Q', op_id << 32 | w) for w in range(off // 8, (off + ln) // 8))

def plausible(w, v):
    if v == 0:
        return True
    op = v >> 32
    if (v & 0xffffffff) != w or op < 1 or op >= len(ops):
        return False
    kind, off, ln = ops[op]
    return kind == 'w' and off <= w * 8 < off + ln

handles = []
for i in range(CONNS):
    h = nbd.NBD()
    h.connect_uri(uri)
    handles.append(h)
queue = [[] for _ in range(CONNS)]
for i in range(CONNS * OPS):
    ops.append(random_op())
    queue[i % CONNS].append(i + 1)

def retire(err):
    return 1

def issue(h, op_id):
    kind, off, ln = ops[op_id]
    if kind == 'w':
        h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(tags(op_id, off, ln))), off,
                     completion=retire)
    elif kind == 'z':
        h.aio_zero(ln, off, completion=retire, flags=0 if op_id & 1 else nbd.CMD_FLAG_NO_HOLE)
    elif kind == 't':
        h.aio_trim(ln, off, completion=retire)
    else:
        buf = nbd.Buffer(ln)
        def done(err, buf=buf, off=off, ln=ln):
            global bad_reads
            data = buf.to_bytearray()
            for k in range(ln // 8):
                if not plausible(off // 8 + k, struct.unpack_from('>Q', data, k * 8)[0]):
                    bad_reads += 1
            return 1
        h.aio_pread(buf, off, completion=done)

# One event loop over the four sockets (libnbd's aio_get_fd/direction).
while True:
    for i, h in enumerate(handles):
        while queue[i] and h.aio_in_flight() < DEPTH:
            issue(h, queue[i].pop(0))
    busy = [h for h in handles if h.aio_in_flight()]
    if not busy:
        break
    rl = [h.aio_get_fd() for h in busy if h.aio_get_direction() & nbd.AIO_DIRECTION_READ]
    wl = [h.aio_get_fd() for h in busy if h.aio_get_direction() & nbd.AIO_DIRECTION_WRITE]
    r, w, _ = select.select(rl, wl, [])
    for h in busy:
        if h.aio_get_fd() in r:
            h.aio_notify_read()
        elif h.aio_get_fd() in w:
            h.aio_notify_write()

disk = handles[0].pread(AREA, 0)
words = [struct.unpack_from('>Q', disk, 8 * w)[0] for w in range(WORDS)]
cover = [0] * WORDS
beaten = {}
for op_id in range(1, len(ops)):
    kind, off, ln = ops[op_id]
    if kind == 'r':
        continue
    for w in range(off // 8, (off + ln) // 8):
        cover[w] |= 1 if kind == 'w' else 2
        if kind == 'w' and words[w] and words[w] >> 32 != op_id:
            beaten.setdefault(op_id, set()).add(words[w] >> 32)
implausible = sum(1 for w in range(WORDS) if not plausible(w, words[w]))
lost_zero = sum(1 for w in range(WORDS) if words[w] == 0 and cover[w] == 1)
inversions = sum(1 for x, ys in beaten.items() for y in ys if x in beaten.get(y, ()))
for h in handles:
    h.shutdown()
print("bad_reads=%d implausible=%d lost_zero=%d inversions=%d" %
      (bad_reads, implausible, lost_zero, inversions))
PY
ok /usr/bin/python3 hammer.py "$(uri s)"
expect_eq "$(out)" "bad_reads=0 implausible=0 lost_zero=0 inversions=0" "model"
stop s
qemu_clean disk.qcow2
passed
