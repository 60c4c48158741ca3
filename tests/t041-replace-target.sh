# Replacing an existing target keeps its owner and permissions, and a FIFO
# (or another file that is neither regular nor a block device) is refused
# at once as an image or backing file instead of hanging (issue 12, item 10).
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io timeout

ok imgtool create -q -f qcow2 src.qcow2 1M
ok qemu-io -c 'write -P 0x5a 0 64k' src.qcow2

# convert without -n and create over a file: a new inode, the old owner and mode.
owner=$(id -un) group=$(id -gn)
if [ "$(id -u)" = 0 ]; then owner=nobody group=$(id -gn nobody); fi
for cmd in "convert -O raw src.qcow2 t.img" "convert -O qcow2 src.qcow2 t.img" \
           "create -q -f qcow2 t.img 2M" "create -q -f raw t.img 2M"; do
    rm -f t.img; touch t.img; chown "$owner:$group" t.img; chmod 0640 t.img
    ino=$(stat -c %i t.img)
    ok imgtool $cmd
    expect_eq "$(stat -c '%U:%G %a' t.img)" "$owner:$group 640" "$cmd: owner and mode"
    [ "$(stat -c %i t.img)" != "$ino" ] || die "$cmd: expected a new inode"
done
rm -f t.img
ok imgtool convert -O raw src.qcow2 t.img
same_content -f qcow2 -F raw src.qcow2 t.img
expect_eq "$(stat -c '%a' t.img)" "$(printf '%o' $(( 0666 & ~0$(umask) & 0644 )))" "a new file's mode"

# A FIFO is refused before any I/O, with one line naming it.
mkfifo pipe.img
msg="pipe.img: is a FIFO; an image must be a regular file or a block device"
expect_status 1 timeout 10 "$IMGTOOL" info pipe.img
expect_eq "$(err)" "imgtool: $msg"
expect_status 1 timeout 10 "$IMGTOOL" convert -O raw pipe.img out.raw
expect_eq "$(err)" "imgtool: $msg"
expect_status 1 timeout 10 "$IMGTOOL" convert -O raw src.qcow2 pipe.img
expect_eq "$(err)" "imgtool: $msg"
expect_status 1 timeout 10 "$IMGTOOL" create -q -f raw pipe.img 1M
expect_eq "$(err)" "imgtool: $msg"
# ... and as a backing file.
ok qemu-img create -q -f qcow2 -u -b pipe.img -F raw over.qcow2 1M
expect_status 1 timeout 10 "$IMGTOOL" convert -O raw over.qcow2 out.raw
expect_eq "$(err)" "imgtool: over.qcow2: cannot open backing file: $msg"
expect_status 1 timeout 10 "$IMGTOOL" io -c 'read 0 512' over.qcow2
expect_eq "$(err)" "imgtool: over.qcow2: cannot open backing file: $msg"
[ ! -e out.raw ] || die "out.raw was created"
# Character devices are not images either.
expect_status 1 timeout 10 "$IMGTOOL" info /dev/null
expect_eq "$(err)" "imgtool: /dev/null: is a character device; an image must be a regular file or a block device"
passed
