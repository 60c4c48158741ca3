# The fuzz target's replay build runs over the corpus of small and damaged
# images (tests/corpus) and over inputs made here: a qcow2-looking header
# with random fields, truncated and bit-flipped copies of real images.
# Every input must be handled (an error is fine; a crash or a hang is not).
. "$(dirname "$0")/lib.sh"
need qemu-img python3
src=$(cd "$(dirname "$0")" && pwd)
[ -n "${FUZZ_REPLAY:-}" ] || skip "FUZZ_REPLAY not set (run through make check)"
# The NBD server's target reads client byte streams, not images: it has
# its own corpus (t653).
bins=$(tr ' ' '\n' <<<"$FUZZ_REPLAY" | grep -v 'replay_fuzz_nbd_server$' || true)
[ -n "$bins" ] || die "no replay program in FUZZ_REPLAY"

mkdir inputs
cp "$src"/corpus/* inputs/ 2>/dev/null || true
# Real images of each format, then damaged variants of them.
ok qemu-img create -f raw inputs/raw.img 1M
for v in 0.10 1.1; do
    ok qemu-img create -q -f qcow2 -o compat=$v,cluster_size=4k "inputs/q$v.qcow2" 4M
    ok qemu-io -c 'write -P 7 0 64k' -c 'write -z 1M 64k' "inputs/q$v.qcow2"
done
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
