# Error paths free what they allocated (issue 12 item 11): qcow2_create
# leaked the backing file name and format it had read back from the new
# header when opening the new image failed.  Checked with valgrind (which
# works on any build, where the sanitizer build only covers SANITIZE=1
# runs): no definitely lost block on the error paths of create, of a write
# refused by the overlap check, of a looping backing chain and of a repair
# that refuses to grow the file.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io valgrind python3
if nm "$IMGTOOL" 2>/dev/null | grep -q __asan_init; then
    skip "imgtool is built with AddressSanitizer (valgrind cannot run it)"
fi

# no_leaks CMD...: run imgtool CMD under valgrind; exit status in $rc.
no_leaks() {
    rc=0
    valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 \
        --log-file="$T/vg.log" "$IMGTOOL" "$@" >"$T/.out" 2>"$T/.err" || rc=$?
    checks=$((checks + 1))
    [ "$rc" != 99 ] || die "imgtool $* leaks: $(grep -A12 'definitely lost' "$T/vg.log" | head -40)"
}

ok qemu-img create -q -f qcow2 base.qcow2 1M
# 1. create: opening the new image fails (an L2 cache size that is not a
# size) after the backing file name was read back from its header (when
# the setting is read by the command before create, it fails earlier).
IMGTOOL_L2_CACHE_SIZE=bogus no_leaks create -f qcow2 -b base.qcow2 -F qcow2 new.qcow2 1M
case $rc in
0) ;;   # the setting no longer reaches create: nothing to fail
1) expect_match "$(err)" "^imgtool: (new.qcow2: )?IMGTOOL_L2_CACHE_SIZE='bogus' is not a size \(use e.g. 4M\)$" \
       "create with a bad L2 cache size" ;;
*) die "create exited $rc" ;;
esac
rm -f new.qcow2
no_leaks create -f qcow2 -b base.qcow2 -F qcow2 new.qcow2 1M
expect_eq "$rc" 0 "create with a backing file"
no_leaks create -f qcow2 -o cluster_size=512 huge.qcow2 1E
expect_eq "$rc" 1 "create of a size the L1 table cannot cover"

# 2. A write refused by the overlap check.
ok qemu-io -f qcow2 -c 'write -P 1 0 64k' new.qcow2
python3 - new.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
h = f.read(104)
l1, rt = struct.unpack(">Q", h[40:48])[0], struct.unpack(">Q", h[48:56])[0]
f.seek(l1); l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
f.seek(l2); f.write(struct.pack(">Q", (1 << 63) | l1))
PY
no_leaks io -c 'write -P 2 0 4k' new.qcow2
expect_eq "$rc" 1 "write onto the L1 table"
expect_match "$(err)" "Marking image as corrupt" "write onto the L1 table"

# 3. A backing chain that loops.
ok qemu-img create -q -f qcow2 self.qcow2 1M
ok qemu-img rebase -q -u -F qcow2 -b self.qcow2 self.qcow2
no_leaks io -c 'read 0 512' self.qcow2
expect_eq "$rc" 1 "read of a self-backed image"

# 4. A repair that does not grow the file for a far refcount block.
ok qemu-img create -q -f qcow2 -o cluster_size=512 far.qcow2 64k
python3 - far.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
rt = struct.unpack(">Q", f.read(56)[48:56])[0]
f.seek(rt + 8); f.write(struct.pack(">Q", 1 << 39))
PY
no_leaks check -r all far.qcow2
expect_eq "$rc" 0 "repair of a far refcount block"
passed
