# A failing, stuck, killed or hostile NBD server: one-line errors naming
# the server, exit status 1 within a bounded time, no target left behind.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
need qemu-img nbdkit python3 timeout
. "$here/nbd-lib.sh"

# I/O errors from the server (nbdkit's error filter), with its message.
start_nbdkit err.sock --filter=error data "1 2 3" size=2M error=EIO \
    error-pread-rate=100%
expect_status 1 timeout 60 "$IMGTOOL" convert "$NBD_URI" out.raw
expect_eq "$(err | grep '^imgtool')" "imgtool: $NBD_URI: read at offset 0 failed: Input/output error"
[ ! -e out.raw ] || die "out.raw left behind"
checks=$((checks + 1))

# A server that stops answering (nbdkit's delay filter: each read takes a
# minute): the timeout (IMGTOOL_NBD_TIMEOUT seconds) ends it.
start_nbdkit delay.sock --filter=delay data "1 2 3" size=2M delay-read=60
expect_status 1 env IMGTOOL_NBD_TIMEOUT=2 timeout 50 "$IMGTOOL" convert -O qcow2 "$NBD_URI" out.qcow2
expect_eq "$(err | grep '^imgtool')" "imgtool: $NBD_URI: no reply from the server for 2 s (timeout)"
[ -z "$(ls out.qcow2* 2>/dev/null)" ] || die "target left behind: $(ls out.qcow2*)"
checks=$((checks + 1))
expect_status 1 env IMGTOOL_NBD_TIMEOUT=0 "$IMGTOOL" info "$NBD_URI"
expect_eq "$(err)" "imgtool: IMGTOOL_NBD_TIMEOUT='0' is not a number from 1 to 86400"

# The server is killed in the middle of a copy (after its first read, as
# its log shows; reads are slowed down so that the copy is still running).
start_nbdkit kill.sock --filter=log --filter=delay data "1 2 3 @1048576 4 @3145728 5" size=4M \
    delay-read=1 logfile="$T/kill.log"
victim=$NBD_PID
"$IMGTOOL" mirror --sync=full "$NBD_URI" mirror.qcow2 2>mirror.err &
copier=$!
for i in $(seq 300); do grep -q ' Read ' "$T/kill.log" 2>/dev/null && break; sleep 0.1; done
kill -9 "$victim"
rc=0; timeout 60 tail --pid="$copier" -f /dev/null; wait "$copier" || rc=$?
expect_eq "$rc" 1 "exit status after the server died"
msg=$(cat mirror.err)
checks=$((checks + 1))
[[ $msg == "imgtool: $NBD_URI: "* ]] || die "error does not name the server: $msg"
expect_match "$msg" "(the server closed the connection|Connection reset by peer|Broken pipe)$" "error"
expect_eq "$(wc -l < mirror.err)" 1 "lines of error"
[ -z "$(ls mirror.qcow2* 2>/dev/null)" ] || die "target left behind: $(ls mirror.qcow2*)"
checks=$((checks + 1))

# The same with a file source and an NBD target: the source's bitmap is
# as it was when the target's server dies in the middle of the copy.
ok qemu-img create -q -f qcow2 src.qcow2 4M
ok qemu-img bitmap --add src.qcow2 b0
ok qemu-io -f qcow2 -c 'write -P 7 0 1M' -c 'write -P 8 2M 1M' src.qcow2
ok imgtool bitmap --list src.qcow2
bitmaps_before=$(out)
start_nbdkit target.sock --filter=log --filter=delay memory 4M delay-write=1 \
    logfile="$T/target.log"
victim=$NBD_PID
"$IMGTOOL" mirror --sync=bitmap --bitmap=b0 src.qcow2 "$NBD_URI" 2>mirror2.err &
copier=$!
for i in $(seq 300); do grep -q ' Write ' "$T/target.log" 2>/dev/null && break; sleep 0.1; done
kill -9 "$victim"
rc=0; timeout 60 tail --pid="$copier" -f /dev/null; wait "$copier" || rc=$?
expect_eq "$rc" 1 "exit status after the target's server died"
expect_eq "$(wc -l < mirror2.err)" 1 "lines of error"
ok imgtool bitmap --list src.qcow2
expect_eq "$(out)" "$bitmaps_before" "source bitmaps after the failed mirror"
qemu_clean src.qcow2

# Without extents (noextents filter) everything is data, as for qemu-img.
start_nbdkit ne.sock --filter=noextents data "1 2 3 @1048576 4" size=2M
ok imgtool map --output=json "$NBD_URI"
expect_eq "$(out)" "$(qemu-img map --output=json "$NBD_URI")" "map without extents"

# Hostile replies: each refused with what is wrong.
hostile() {
    rm -f "$T/h.sock"
    python3 "$here/nbd/hostile-server.py" "$T/h.sock" "$1" &
    NBD_PIDS+=($!)
    for i in $(seq 100); do [ -S "$T/h.sock" ] && break; sleep 0.1; done
    hu=$(unix_uri "$T/h.sock")
    expect_status 1 timeout 60 "$IMGTOOL" "${@:3}" "$hu"
    expect_eq "$(err)" "imgtool: $hu: $2" "scenario $1"
}
hostile bad-cookie 'reply for a request that was not sent (cookie 12409)' io -c 'read 0 64k'
hostile outside 'data chunk 1+65536 outside the read 0+65536' io -c 'read 0 64k'
hostile short 'read reply covers 32768 of 65536 bytes' io -c 'read 0 64k'
hostile overlap 'overlapping read reply chunks at offset 0' io -c 'read 0 64k'
hostile bad-magic 'bad reply magic 0x12345678' io -c 'read 0 64k'
hostile huge-chunk 'reply chunk of 4294967280 bytes (limit 33558542)' io -c 'read 0 64k'
hostile simple-read 'simple reply with data to a read after structured replies were negotiated' io -c 'read 0 64k'
hostile error-chunk 'read at offset 0 failed: Input/output error: disk on fire' io -c 'read 0 64k'
hostile status-past-end 'block status descriptor 0 (length 1049088 at 0) is empty or past the end of the export' map
hostile status-bad-context 'block status for context id 9, which was not negotiated' map

# The reply-parser fuzz target's replay build over its corpus.
replay=
for bin in ${FUZZ_REPLAY:-}; do case $bin in *replay_fuzz_nbd_reply) replay=$bin;; esac; done
if [ -n "$replay" ]; then
    for f in "$here"/corpus-nbd/*; do
        timeout 20 "$replay" "$f" >/dev/null 2>replay.err || die "fuzz replay failed on $f: $(cat replay.err)"
        checks=$((checks + 1))
    done
fi
passed
