# mirror --sync=bitmap and export read what the bitmap marks, not the disk
# around it.  The source's data is mapped into memory (hostfile_map_read),
# and a page fault that misses the page cache reads read_ahead_kb around
# the page (8 MiB on some virtual disks): a 1%-dirty 4 GiB disk made
# mirror --sync=bitmap read 1.5 GB for 41 MB of dirty clusters, slower
# than qemu-storage-daemon's backup.  Here 40 scattered 64 KiB clusters
# of a 256 MiB image are copied with the source out of the page cache;
# the bytes the process read from the disk (rusage inblock) must stay
# near the dirty data (the old code read 250 MB here, on a disk with
# read_ahead_kb=8192; on one with a small read-ahead this test cannot tell).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

ok qemu-img create -q -f qcow2 s.qcow2 256M
ok qemu-io -c 'write -P 1 0 256M' s.qcow2
ok imgtool bitmap --add s.qcow2 b
ok cp s.qcow2 mid.qcow2
args=()
for i in $(seq 0 39); do args+=(-c "write -P 2 $((i * 6 << 20)) 64k"); done
ok qemu-io "${args[@]}" s.qcow2
dirty=$((40 * 65536))

# read_bytes CACHED-OUT-FILE CMD...: CMD's disk reads, in bytes, with
# FILE's pages dropped from the page cache first.
cat >reads.py <<'PY'
import os, resource, subprocess, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)
subprocess.run(sys.argv[2:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock * 512)
PY
limit=$((dirty * 2 + (4 << 20)))

ok cp mid.qcow2 t.qcow2
ok python3 reads.py s.qcow2 "$IMGTOOL" mirror -q --sync=bitmap --bitmap=b --bitmap-mode=never \
    s.qcow2 t.qcow2
[ "$(out)" -le $limit ] || die "mirror --sync=bitmap read $(out) bytes for $dirty dirty (limit $limit)"
ok qemu-img compare s.qcow2 t.qcow2

ok python3 reads.py s.qcow2 "$IMGTOOL" export -q --force --sync=differential --bitmap=b \
    -b mid.qcow2 s.qcow2 d.qcow2
[ "$(out)" -le $limit ] || die "export read $(out) bytes for $dirty dirty (limit $limit)"
ok qemu-img compare s.qcow2 d.qcow2
passed
