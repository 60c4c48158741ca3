# A new target under its temporary name skips the flushes that order
# metadata writes (a crash leaves only a temporary file nobody opens), and
# is flushed once before it is renamed into place: the number of fdatasync
# calls does not grow with the image, and the last one follows the last
# write.  An existing target (-n) keeps every ordering flush.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io strace
# LeakSanitizer cannot run under ptrace: in a SANITIZE=1 build, strace'd
# runs check everything but leaks (the other tests check those).
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0

# 512-byte clusters: writing 4 MiB of data allocates 128 L2 tables and
# many refcount blocks, each a flush point when flushes are not deferred.
ok qemu-img create -q -f qcow2 -o cluster_size=512 src.qcow2 64M
ok qemu-io -c 'write -P 7 0 4M' -c 'write -P 8 40M 1M' src.qcow2

count_syncs() { grep -cE '^[0-9]+ +fdatasync\(|^fdatasync\(' "$1" || true; }

for cmd in convert mirror; do
    rm -f out.qcow2
    if [ $cmd = convert ]; then
        ok strace -f -o trace -e trace=fdatasync,pwritev,pwrite64,rename "$IMGTOOL" convert -O qcow2 -o cluster_size=512 src.qcow2 out.qcow2
    else
        ok strace -f -o trace -e trace=fdatasync,pwritev,pwrite64,rename "$IMGTOOL" mirror -q -o cluster_size=512 src.qcow2 out.qcow2
    fi
    same_content src.qcow2 out.qcow2
    qemu_clean out.qcow2
    syncs=$(count_syncs trace)
    [ "$syncs" -ge 1 ] && [ "$syncs" -le 16 ] || die "$cmd: $syncs fdatasync calls for a new target"
    # The rename comes after the last write and after a flush that follows it.
    last_write=$(grep -nE 'pwritev?(64)?\(' trace | tail -n 1 | cut -d: -f1)
    last_sync=$(grep -nE 'fdatasync\(' trace | tail -n 1 | cut -d: -f1)
    rename=$(grep -nE 'rename\(' trace | tail -n 1 | cut -d: -f1)
    [ "$last_sync" -gt "$last_write" ] && [ "$rename" -gt "$last_sync" ] ||
        die "$cmd: write at line $last_write, flush at $last_sync, rename at $rename"
done

# convert -n into an existing image: ordering flushes stay.
ok qemu-img create -q -f qcow2 -o cluster_size=512 existing.qcow2 64M
ok strace -f -o trace -e trace=fdatasync "$IMGTOOL" convert -n src.qcow2 existing.qcow2
same_content src.qcow2 existing.qcow2
syncs=$(count_syncs trace)
[ "$syncs" -gt 16 ] || die "convert -n: only $syncs fdatasync calls into an existing image"
passed
