# imgtool serve --mirror --sync=bitmap: the target is a diff image of what
# the bitmap marks plus what clients write meanwhile, with its zeroes
# allocated, so that rebased onto the previous full copy it reads as the
# source (qemu-img compare); the bitmap is clear once the job completed.
# A SIGTERM before the job is ready cancels it (exit 130): the new target
# is gone and the bitmap keeps every range still to copy, so the next run
# resumes and produces the same diff.
. "$(dirname "$0")/serve-mirror-lib.sh"

qemu-img create -q -f qcow2 src.qcow2 16M
qemu-io -c "write -P 1 0 16M" src.qcow2 >/dev/null
qemu-img convert -f qcow2 -O qcow2 src.qcow2 base.qcow2
qemu-img bitmap --add src.qcow2 b0
# Changes since base.qcow2, recorded by b0: data, zeroes over data, an
# unaligned write inside a cluster.
qemu-io -c "write -P 2 1M 64k" -c "write -z 4M 128k" -c "write -P 3 100k 5k" \
    src.qcow2 >/dev/null
ok imgtool bitmap --dump src.qcow2 b0
before=$(out)

# 1. Cancelled before ready (a slow job): exit 130, no target, bitmap as before.
serve_bg c -t --mirror=diff.qcow2 --sync=bitmap --mirror-bitmap=b0 -O qcow2 --speed=16k \
    src.qcow2
wait_event c started
expect_eq "$(server_status c TERM)" 130 "exit status of a cancelled mirror"
wait_event c cancelled
[ -e diff.qcow2 ] && die "a cancelled job left its new target"
ok imgtool bitmap --dump src.qcow2 b0
expect_eq "$(out)" "$before" "the bitmap after a cancelled job"

# 2. The run that resumes, with client writes while it copies (the
# unaligned zero write leaves the rest of its cluster as data).
serve_bg r -t --mirror=diff.qcow2 --sync=bitmap --mirror-bitmap=b0 -O qcow2 \
    --copy-mode=write-blocking src.qcow2
qemu-io -f raw -c "write -P 4 8M 64k" -c "write -z 2M 4k" -c "write -P 5 12M 7k" \
    "$(uri r)" >/dev/null
wait_event r ready
expect_eq "$(server_status r TERM)" 0 "exit status"
wait_event r completed
ok qemu-img check diff.qcow2
ok qemu-img check src.qcow2
ok imgtool bitmap --dump src.qcow2 b0
expect_eq "$(out)" "Offset          Length" "the bitmap after the completed job"
# Only the changed clusters are in the diff: 64k..128k, 1M, 2M, 4M..4M+128k,
# 8M, 12M (64 KiB clusters); the zeroes are allocated zero clusters.
ok qemu-img map -f qcow2 --output=json diff.qcow2
map=$(out | sed 's/, "offset": [0-9]*//; s/"compressed": false, //')
expect_eq "$(grep -c '"present": true' <<<"$map")" 6 "allocated runs of the diff: $map"
expect_match "$map" '"start": 4194304, "length": 131072, "depth": 0, "present": true, "zero": true' \
    "the zeroed range is not allocated zeroes:"
ok qemu-img rebase -u -f qcow2 -b base.qcow2 -F qcow2 diff.qcow2
ok qemu-img compare -f qcow2 -F qcow2 src.qcow2 diff.qcow2
passed
