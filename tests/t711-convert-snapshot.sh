# convert -l SNAPSHOT as qemu-img's: the source is read as one of its
# internal snapshots recorded it ("snapshot.id=ID,snapshot.name=NAME",
# either or both, or an ID, else a name); the target has the image's
# current virtual size, as qemu-img makes it.  -s is gone from qemu-img
# 7.2 and is refused by both.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# Snapshot 1 "first" of a 1M disk, snapshot 2 "second" after more writes
# and a resize to 2M, then more writes to the active disk.
ok qemu-img create -q -f qcow2 sn.qcow2 1M
ok qemu-io -c 'write -P 1 0 64k' sn.qcow2
ok qemu-img snapshot -c first sn.qcow2
ok qemu-io -c 'write -P 2 0 64k' -c 'write -P 3 128k 64k' sn.qcow2
ok qemu-img resize -q sn.qcow2 2M
ok qemu-img snapshot -c second sn.qcow2
ok qemu-io -c 'write -P 4 0 64k' -c 'write -P 5 1536k 64k' sn.qcow2

for spec in first 1 2 second snapshot.id=1 snapshot.name=second \
            snapshot.id=2,snapshot.name=second; do
    for fmt in raw qcow2; do
        ok qemu-img convert -O $fmt -l $spec sn.qcow2 q.$fmt
        ok imgtool convert -O $fmt -l $spec sn.qcow2 i.$fmt
        same_content -f $fmt -F $fmt q.$fmt i.$fmt
        expect_eq "$(qemu-img map -f $fmt --output=json i.$fmt | sed 's/, "offset": [0-9]*//')" \
            "$(qemu-img map -f $fmt --output=json q.$fmt | sed 's/, "offset": [0-9]*//')" \
            "-l $spec -O $fmt: allocation"
        rm -f q.$fmt i.$fmt
    done
done
ok imgtool convert -O raw -l first sn.qcow2 first.raw
ok qemu-io -f raw -c 'read -P 1 0 64k' -c 'read -P 0 64k 1984k' first.raw
expect_eq "$(out | grep -c 'verification failed')" 0 "snapshot 'first'"
expect_eq "$(stat -c %s first.raw)" 2097152 "the image's current size"
# The image itself is untouched.
ok qemu-io -r -c 'read -P 4 0 64k' -c 'read -P 5 1536k 64k' sn.qcow2
expect_eq "$(out | grep -c 'verification failed')" 0 "active disk after -l"
qemu_clean sn.qcow2

# Not found: both fail with the same words, nothing is created.
for spec in nosuch snapshot.id=1,snapshot.name=second snapshot.name=third ""; do
    expect_status 1 qemu-img convert -O raw -l "$spec" sn.qcow2 x.raw
    expect_status 1 imgtool convert -O raw -l "$spec" sn.qcow2 x.raw
    expect_eq "$(err)" "imgtool: Failed to load snapshot: sn.qcow2: Can't find snapshot" \
        "-l '$spec'"
    [ ! -e x.raw ] || die "-l '$spec' created the target"
done
# Bad parameters are usage errors, as in qemu-img (whose two lines are one).
for spec in snapshot.foo=1 snapshot.id=1,x=2; do
    expect_status 1 qemu-img convert -O raw -l "$spec" sn.qcow2 x.raw
    q=$(err)
    expect_status 1 imgtool convert -O raw -l "$spec" sn.qcow2 x.raw
    expect_eq "$(err | head -n 1)" \
        "imgtool convert: $(sed -n 2p <<<"$q" | sed 's/^qemu-img: //'): $(sed -n 1p <<<"$q" | sed 's/^qemu-img: //')" \
        "-l $spec"
done
# A format without internal snapshots.
ok qemu-img create -q -f raw r.raw 1M
expect_status 1 qemu-img convert -f raw -O raw -l first r.raw x.raw
expect_status 1 imgtool convert -f raw -O raw -l first r.raw x.raw
expect_match "$(err)" "Failed to load snapshot: r.raw: format 'raw' does not support internal snapshots"
expect_status 1 qemu-img convert -O raw -s first sn.qcow2 x.raw
expect_status 1 imgtool convert -O raw -s first sn.qcow2 x.raw
[ ! -e x.raw ] || die "a refused convert created the target"
passed
