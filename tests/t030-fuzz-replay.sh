# The fuzz targets' replay builds (tests/fuzz: fuzz_open reads and checks,
# fuzz_write writes, stores bitmaps and repairs) run over the corpus of
# small and damaged images (tests/corpus) and over inputs made here: a
# qcow2-looking header with random fields, truncated and bit-flipped copies
# of real images (one with bitmaps), and hostile images made by hand
# (refcount blocks far past the end of the file, L2 entries pointing into
# metadata, bitmap directories imgtool cannot load, a self-backed image).
# Every input must be handled within the time limit (an error is fine; a
# crash, a hang or a repair that grows the file without bound is not).
# The test's own directory, found before lib.sh changes to a temporary one
# (run as "bash tests/t030-...", a relative path).
src=$(cd "$(dirname "$0")" && pwd)
. "$(dirname "$0")/lib.sh"
need qemu-img python3
[ -n "${FUZZ_REPLAY:-}" ] || skip "FUZZ_REPLAY not set (run through make check)"
# The NBD server's and the control socket's targets read client byte
# streams, not images: they have their own corpora (t653, t680).
bins=$(tr ' ' '\n' <<<"$FUZZ_REPLAY" | grep -vE 'replay_fuzz_(nbd_server|control)$' || true)
[ -n "$bins" ] || die "no replay program in FUZZ_REPLAY"

mkdir inputs
# The committed corpus (tests/corpus): hostile images kept as files, e.g.
# refcount tables and L1/L2 entries naming offsets far past the file.
cp "$src"/corpus/* inputs/ || die "cannot copy the corpus from $src/corpus"
expect_match "$(ls inputs | wc -l)" '^[1-9]' "corpus files copied"
# Real images of each format, then damaged variants of them.
ok qemu-img create -f raw inputs/raw.img 1M
for v in 0.10 1.1; do
    ok qemu-img create -q -f qcow2 -o compat=$v,cluster_size=4k "inputs/q$v.qcow2" 4M
    ok qemu-io -c 'write -P 7 0 64k' -c 'write -z 1M 64k' "inputs/q$v.qcow2"
done
ok qemu-img create -q -f qcow2 -o cluster_size=4k inputs/qbm.qcow2 4M
ok qemu-img bitmap --add -g 4k inputs/qbm.qcow2 b0
ok qemu-img bitmap --add -g 64k inputs/qbm.qcow2 b1
ok qemu-io -c 'write -P 7 0 64k' -c 'write -P 8 3M 8k' inputs/qbm.qcow2
python3 - inputs <<'PY'
import os, random, struct, sys
random.seed(1234)
d = sys.argv[1]
seeds = [open(os.path.join(d, f), 'rb').read() for f in sorted(os.listdir(d)) if f.endswith('.qcow2')]
n = 0
for s in seeds:
    for cut in (0, 3, 4, 48, 72, 100, 104, 512, 4096, 8192):
        open(os.path.join(d, 'trunc%d' % n), 'wb').write(s[:cut]); n += 1
    for i in range(150):
        b = bytearray(s[:65536])
        for _ in range(random.randint(1, 8)):
            pos = random.randrange(0, min(len(b), 512) if random.random() < 0.7 else len(b))
            b[pos] ^= 1 << random.randrange(8)
        open(os.path.join(d, 'flip%d' % n), 'wb').write(bytes(b)); n += 1
# A header with random fields behind the qcow2 magic and version 2/3.
for i in range(200):
    h = bytearray(os.urandom(4096))
    h[0:4] = b'QFI\xfb'
    h[4:8] = struct.pack('>I', random.choice((2, 3)))
    h[20:24] = struct.pack('>I', random.choice((9, 12, 16, 21, 30, 63, 0)))
    open(os.path.join(d, 'rand%d' % i), 'wb').write(bytes(h))
PY
# Hostile images, small (512-byte clusters).
for name in far512g far2e55 l2rb l2l1 l2l2 rc0l1 bmnul bmflags bmdup selfback; do
    ok qemu-img create -q -f qcow2 -o cluster_size=512 "inputs/h-$name.qcow2" 64k
done
for name in bmnul bmflags bmdup; do
    ok qemu-img bitmap --add inputs/h-$name.qcow2 ab
    ok qemu-img bitmap --add inputs/h-$name.qcow2 cd
done
for f in inputs/h-*.qcow2; do
    ok qemu-io -c 'write -P 7 0 4k' -c 'write -P 8 60k 4k' "$f"
done
ok qemu-img rebase -q -u -F qcow2 -b h-selfback.qcow2 inputs/h-selfback.qcow2
python3 - inputs <<'PY'
import os, struct, sys
d = sys.argv[1]
def patch(name, fn):
    f = open(os.path.join(d, 'h-%s.qcow2' % name), 'r+b')
    h = f.read(4096)
    l1, rt = struct.unpack('>Q', h[40:48])[0], struct.unpack('>Q', h[48:56])[0]
    f.seek(l1); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
    f.seek(rt); rb = struct.unpack('>Q', f.read(8))[0]
    pos = struct.unpack('>I', h[100:104])[0]
    diroff = 0
    while pos + 8 <= len(h):
        t, n = struct.unpack('>II', h[pos:pos + 8])
        if t == 0:
            break
        if t == 0x23852875:
            diroff = struct.unpack('>Q', h[pos + 24:pos + 32])[0]
        pos += 8 + (n + 7) // 8 * 8
    fn(f, l1, rt, l2, rb, diroff)
def put(f, at, fmt, v):
    f.seek(at); f.write(struct.pack(fmt, v))
COPIED = 1 << 63
patch('far512g', lambda f, l1, rt, l2, rb, dr: put(f, rt + 8, '>Q', (1 << 39) - 512))
patch('far2e55', lambda f, l1, rt, l2, rb, dr: put(f, rt + 8, '>Q', 1 << 55))
patch('l2rb', lambda f, l1, rt, l2, rb, dr: put(f, l2, '>Q', COPIED | rb))
patch('l2l1', lambda f, l1, rt, l2, rb, dr: put(f, l2, '>Q', COPIED | l1))
patch('l2l2', lambda f, l1, rt, l2, rb, dr: put(f, l2, '>Q', COPIED | l2))
patch('rc0l1', lambda f, l1, rt, l2, rb, dr: put(f, rb + 2 * (l1 >> 9), '>H', 0))
patch('bmnul', lambda f, l1, rt, l2, rb, dr: put(f, dr + 25, '>B', 0))
patch('bmflags', lambda f, l1, rt, l2, rb, dr: put(f, dr + 12, '>I', 4))
patch('bmdup', lambda f, l1, rt, l2, rb, dr: put(f, dr + 24, '>H', 0x6364))
PY
count=0
for f in inputs/*; do
    for bin in $bins; do
        timeout 20 "$bin" "$f" >/dev/null 2>"$T/replay.err"
        rc=$?
        [ $rc = 0 ] || die "$(basename "$bin") crashed or hung on $(basename "$f") (exit $rc): $(head -c 2000 "$T/replay.err")"
    done
    count=$((count + 1))
done
checks=$((checks + count))
expect_match "$count" '^[0-9]{3,}$' "number of inputs"
passed
