# The control socket's fuzz target (tests/fuzz/fuzz_control.c: the QMP
# codec and commands of mirror/control.c, the JSON reader of
# formats/json.c) replayed over client byte streams made here: sessions of
# every command with good and bad arguments, hostile JSON (deep nesting,
# long strings, bad escapes and UTF-8, huge numbers, a command larger than
# the limit), then truncated and bit-flipped copies.  Every input must end
# without a crash, a hang, an ASan report, or a reply line that is not a
# JSON object (the replay runs built both ways by make check).
. "$(dirname "$0")/lib.sh"
need python3
[ -n "${FUZZ_REPLAY:-}" ] || skip "FUZZ_REPLAY not set (run through make check)"
bins=$(tr ' ' '\n' <<<"$FUZZ_REPLAY" | grep 'replay_fuzz_control$' || true)
[ -n "$bins" ] || die "no replay_fuzz_control in FUZZ_REPLAY"

mkdir inputs
python3 - inputs <<'PY'
import json, os, random, sys
random.seed(680)
d = sys.argv[1]
def cmd(name, args=None, id=None):
    m = {"execute": name}
    if args is not None:
        m["arguments"] = args
    if id is not None:
        m["id"] = id
    return json.dumps(m)
caps = cmd("qmp_capabilities")
dev = {"device": "mirror0"}
cmds = [cmd("query-version"), cmd("query-commands"), cmd("query-block-jobs", id=1),
        cmd("block-job-set-speed", {"device": "mirror0", "speed": 1 << 20}, id="s"),
        cmd("block-job-set-speed", {"device": "mirror0", "speed": -5}),
        cmd("block-job-set-speed", {"device": "mirror0", "speed": 1e30}),
        cmd("block-job-change", {"id": "mirror0", "type": "mirror", "copy-mode": "write-blocking"}),
        cmd("block-job-change", {"id": "mirror0", "type": "stream", "copy-mode": "background"}),
        cmd("block-job-change", {"id": "nope", "type": "mirror", "copy-mode": "x"}),
        cmd("block-job-cancel", {"device": "mirror0", "force": False}, id=[None, 1.5, {"a": True}]),
        cmd("block-job-cancel", {"device": "mirror0", "force": True}),
        cmd("block-job-complete", dev, id="c"), cmd("block-job-complete", {"device": 3}),
        cmd("block-job-complete", {}), cmd("nope"), '{"execute": "query-block-jobs", "arguments": [1]}',
        '{"foo": 1}', '[1, 2]', '"str"', '7', '{', '}', '{"a":1,}', '{"a" 1}', '{"a":1,"a":2}',
        '"\\ud800"', '"\\udc00x"', '"\\u0000"', '"\xc3\x28"', '"\\uD83D\\uDE00"', '01', '-', '1e99999',
        '[' * 40 + ']' * 40, '{"a":' * 40 + '1' + '}' * 40, '[' + '0,' * 5000 + '0]',
        '"' + 'x' * 30000 + '"', '{"execute": "' + 'y' * 70000 + '"}']
sessions = [caps + "\n" + "\n".join(cmds) + "\n",
            "".join(cmds[:6]),                                   # no capabilities, no newlines
            caps + caps + cmds[2] + "\r\n" + cmds[3],
            caps + "\n" + " " * 70000 + cmds[2] + "\n",
            caps + "\n" + "[" * 70000,
            caps + "\n" + '{"execute": "query-block-jobs", "id": "' + "\\" * 100 + '"}\n']
n = 0
for s in sessions:
    s = s.encode('utf-8', 'surrogateescape') if isinstance(s, str) else s
    open(os.path.join(d, 'session%d' % n), 'wb').write(s); n += 1
    for cut in sorted(random.sample(range(len(s)), min(len(s), 12))):
        open(os.path.join(d, 'cut%d' % n), 'wb').write(s[:cut]); n += 1
    for i in range(40):
        b = bytearray(s[:4096])
        for _ in range(random.randint(1, 6)):
            b[random.randrange(len(b))] ^= 1 << random.randrange(8)
        open(os.path.join(d, 'flip%d' % n), 'wb').write(bytes(b)); n += 1
PY
replay_inputs "$bins"
passed
