# Guest-written headers (issue 12, item 5): a raw image whose format was
# probed keeps it (a write that would make it probe as qcow2 is refused, as
# QEMU refuses it; naming the format allows it); create -b without -F is
# refused as by qemu-img 7.2; backing names with a ':' are stored so that
# QEMU reads them as file names.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

# evil.raw: a raw disk whose guest wrote a qcow2 header backed by a host file.
qemu-img create -q -f qcow2 -b /etc/passwd -F raw evil.qcow2 1M
qemu-img create -q -f raw evil.raw 1M
dd if=evil.qcow2 of=evil.raw conv=notrunc bs=64k count=1 2>/dev/null
qemu-img create -q -f raw victim.raw 1M
refusal="victim.raw: refusing to write a qcow2 header into an image whose format raw was probed, not given (name the format to allow it)"
expect_status 1 imgtool convert -n -f raw evil.raw victim.raw
expect_eq "$(err)" "imgtool: $refusal"
expect_eq "$(qemu-img info --output=json victim.raw | grep '"format"')" '    "format": "raw",'
ok qemu-io -f raw -c 'read -P 0 0 1M' victim.raw
# Writes that keep it raw go through; so does everything with the format named.
ok imgtool io -c 'write -P 0x51 0 4' -c 'write -P 0x52 512 512' victim.raw
ok qemu-io -f raw -c 'read -P 0x51 0 4' -c 'read -P 0 4 508' -c 'read -P 0x52 512 512' victim.raw
expect_status 1 imgtool mirror -q --mode=existing -f raw evil.raw victim.raw
expect_eq "$(err)" "imgtool: $refusal"
ok qemu-io -f raw -c 'read -P 0x51 0 4' victim.raw
ok imgtool convert -n -f raw -O raw evil.raw victim.raw
same_content -f raw -F raw evil.raw victim.raw
expect_eq "$(qemu-img info --output=json victim.raw | grep '"format"')" '    "format": "qcow2",'
# A probed qcow2 image's guest data may hold anything (it is not the header).
qemu-img create -q -f qcow2 q.qcow2 1M
ok imgtool convert -n -f raw evil.raw q.qcow2
same_content -f raw -F qcow2 evil.raw q.qcow2

# create -b without -F: refused as by qemu-img 7.2, nothing printed or created.
qemu-img create -q -f raw a.raw 1M
expect_status 1 imgtool create -f qcow2 -b a.raw d.qcow2
expect_eq "$(out)" ""
expect_eq "$(err)" "imgtool: d.qcow2: Backing file specified without backing format (detected format of a.raw: raw; give it with -F)"
expect_status 1 imgtool create -f qcow2 -o backing_file=a.raw d.qcow2 1M
expect_match "$(err)" "^imgtool: d.qcow2: Backing file specified without backing format"
expect_status 1 imgtool create -f qcow2 -b nosuch.raw d.qcow2 1M
expect_eq "$(err)" "imgtool: d.qcow2: Backing file specified without backing format (give it with -F)"
[ ! -e d.qcow2 ] || die "d.qcow2 was created"
ok imgtool create -q -f qcow2 -b a.raw -F raw d.qcow2

# Backing names with ':' before any '/' are stored as ./NAME (QEMU would
# read x:y.raw as protocol "x"); QEMU then opens the chain.
ok qemu-io -f raw -c 'write -P 0x77 0 64k' a.raw
cp a.raw x:y.raw
ok imgtool create -q -f qcow2 -b x:y.raw -F raw c1.qcow2
expect_eq "$(qemu-img info --output=json c1.qcow2 | grep '"backing-filename"')" '    "backing-filename": "./x:y.raw",'
ok qemu-io -c 'read -P 0x77 0 64k' c1.qcow2
ok imgtool create -q -f qcow2 -b a.raw -F raw c2.qcow2
ok imgtool rebase -u -b x:y.raw -F raw c2.qcow2
expect_eq "$(qemu-img info --output=json c2.qcow2 | grep '"backing-filename"')" '    "backing-filename": "./x:y.raw",'
ok qemu-io -c 'read -P 0x77 0 64k' c2.qcow2
ok imgtool create -q -f qcow2 -b "$T/x:y.raw" -F raw c3.qcow2
expect_eq "$(qemu-img info --output=json c3.qcow2 | grep '"backing-filename"')" "    \"backing-filename\": \"$T/x:y.raw\","
mkdir d:1
cp a.raw d:1/b.raw
ok imgtool create -q -f qcow2 -b d:1/b.raw -F raw c4.qcow2
expect_eq "$(qemu-img info --output=json c4.qcow2 | grep '"backing-filename"')" '    "backing-filename": "./d:1/b.raw",'
ok qemu-io -c 'read -P 0x77 0 64k' c4.qcow2
passed
