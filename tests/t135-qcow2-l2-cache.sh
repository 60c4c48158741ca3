# The qcow2 L2 cache is sized by IMGTOOL_L2_CACHE_SIZE (as QEMU's
# l2-cache-size option): reading 200 places that each need their own L2
# table twice reads every table once with a cache that holds them all,
# and twice with one that holds 16.  A bad value is a one-line error.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io strace
# LeakSanitizer cannot run under ptrace: in a SANITIZE=1 build, strace'd
# runs check everything but leaks (the other tests check those).
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0

# 4 KiB clusters: one L2 table maps 2 MiB.
ok qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 1G
args=() reads=()
for i in $(seq 0 199); do
    args+=(-c "write -P 2 $((i * 2 << 20)) 4k")
    reads+=(-c "read -P 2 $((i * 2 << 20)) 4k")
done
ok qemu-io "${args[@]}" img.qcow2

preads() {
    IMGTOOL_L2_CACHE_SIZE=$1 strace -f -o trace -e trace=pread64,preadv "$IMGTOOL" io -q -r \
        "${reads[@]}" "${reads[@]}" img.qcow2 || die "imgtool io with IMGTOOL_L2_CACHE_SIZE=$1 failed"
    grep -cE 'pread(64|v)\(' trace
}
small=$(preads 64k)     # 16 tables
big=$(preads 1M)        # 256 tables
expect_eq "$((small - big))" 200 "L2 table reads saved by the larger cache"

expect_status 1 env IMGTOOL_L2_CACHE_SIZE=lots "$IMGTOOL" info img.qcow2
expect_eq "$(err)" "imgtool: IMGTOOL_L2_CACHE_SIZE='lots' is not a size (use e.g. 4M)"
passed
