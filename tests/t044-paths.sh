# Paths resolve one way (issue 12, item 6): a relative -b of commit,
# mirror --base and export -b names a file beside the image (as qemu-img
# and create -b / rebase -b do), never relative to the working directory;
# convert and mirror honour -o backing_file=...,backing_fmt=... as qemu-img.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io

nooff() { sed 's/, "offset": [0-9]*//'; }
backing_of() { qemu-img info -U --output=json "$1" | sed -n 's/^    "backing-filename": "\(.*\)",$/\1/p'; }
chain() {   # dir/base <- dir/mid <- dir/top, each with its own data
    rm -rf dir; mkdir dir
    qemu-img create -q -f qcow2 dir/base.qcow2 1M
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 dir/mid.qcow2
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 dir/top.qcow2
    qemu-io -c 'write -P 1 0 64k' dir/base.qcow2 >/dev/null
    qemu-io -c 'write -P 2 64k 64k' dir/mid.qcow2 >/dev/null
    qemu-io -c 'write -P 3 128k 64k' dir/top.qcow2 >/dev/null
}

# commit -b: beside the image, as qemu-img commit -b.
chain
qemu-img convert -O raw dir/top.qcow2 top.raw
ok imgtool commit -q -b base.qcow2 dir/top.qcow2
same_content -f raw -F qcow2 top.raw dir/base.qcow2
chain
expect_status 1 imgtool commit -b dir/base.qcow2 dir/top.qcow2
expect_eq "$(err)" "imgtool: dir/base.qcow2: not found in the backing chain of dir/top.qcow2"
expect_status 1 qemu-img commit -b dir/base.qcow2 dir/top.qcow2
ok imgtool commit -q -b "$T/dir/base.qcow2" dir/top.qcow2
same_content -f raw -F qcow2 top.raw dir/base.qcow2
chain
ok imgtool commit -q -d -b mid.qcow2 dir/top.qcow2    # the name stored in top
same_content -f raw -F qcow2 top.raw dir/mid.qcow2

# mirror --base: beside the source.
chain
ok imgtool mirror -q --base=base.qcow2 dir/top.qcow2 above.qcow2
expect_eq "$(backing_of above.qcow2)" "$T/dir/base.qcow2"
same_content -f raw -F qcow2 top.raw above.qcow2
expect_status 1 imgtool mirror --base=dir/base.qcow2 dir/top.qcow2 nope.qcow2
expect_eq "$(err)" "imgtool: dir/base.qcow2: not in the backing chain of dir/top.qcow2 (see imgtool info --backing-chain)"
expect_status 1 imgtool mirror --base=top.qcow2 dir/top.qcow2 nope.qcow2
expect_eq "$(err)" "imgtool: top.qcow2: the base cannot be the source itself"

# export -b: beside the new backup, as the name it stores.
qemu-img create -q -f qcow2 vm.qcow2 1M
mkdir bk
ok imgtool export -q -B n vm.qcow2 bk/full.qcow2
ok qemu-io -c 'write -P 9 0 64k' vm.qcow2
ok imgtool export -q -s incremental -B n -b full.qcow2 vm.qcow2 bk/inc.qcow2
expect_eq "$(backing_of bk/inc.qcow2)" "full.qcow2"
same_content -f qcow2 -F qcow2 vm.qcow2 bk/inc.qcow2
expect_status 1 imgtool export -s incremental -B n -b bk/inc.qcow2 vm.qcow2 bk/inc2.qcow2
expect_match "$(err)" "^imgtool: bk/bk/inc.qcow2: cannot open: No such file or directory"

# convert -o backing_file: as qemu-img convert, only the top layer copied,
# zeroes written, the name stored as given.
qemu-img create -q -f qcow2 base.qcow2 4M
ok qemu-io -c 'write -P 0xaa 0 4M' base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
ok qemu-io -c 'write -P 0xbb 1M 64k' -c 'write -z 2M 128k' top.qcow2
qemu-img convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 top.qcow2 q.qcow2
ok imgtool convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 top.qcow2 i.qcow2
expect_eq "$(qemu-img map --output=json i.qcow2 | nooff)" "$(qemu-img map --output=json q.qcow2 | nooff)" "convert -o backing_file map"
expect_eq "$(backing_of i.qcow2)" "base.qcow2"
same_content top.qcow2 i.qcow2
expect_status 1 imgtool convert -O qcow2 -o backing_file=base.qcow2 top.qcow2 j.qcow2
expect_match "$(err)" "^imgtool: j.qcow2: Backing file specified without backing format"
expect_status 1 imgtool convert -O qcow2 -o backing_fmt=qcow2 top.qcow2 j.qcow2
expect_eq "$(err)" "imgtool: j.qcow2: -o backing_fmt needs -o backing_file"
[ ! -e j.qcow2 ] || die "j.qcow2 was created"
# mirror -o backing_file: the new target is backed by it (sync=top: the top only).
ok imgtool mirror -q -s top -o backing_file=base.qcow2,backing_fmt=qcow2 top.qcow2 m.qcow2
expect_eq "$(backing_of m.qcow2)" "$T/base.qcow2"
expect_eq "$(qemu-img map --output=json m.qcow2 | nooff)" "$(qemu-img map --output=json q.qcow2 | nooff)" "mirror -o backing_file map"
same_content top.qcow2 m.qcow2
mkdir out
cp base.qcow2 out/
ok imgtool mirror -q -s top -o backing_file=base.qcow2,backing_fmt=qcow2 top.qcow2 out/m.qcow2
expect_eq "$(backing_of out/m.qcow2)" "$T/out/base.qcow2"
expect_status 1 imgtool mirror -o backing_fmt=qcow2 top.qcow2 m2.qcow2
expect_match "$(err)" "^imgtool mirror: -o backing_fmt needs -o backing_file"
passed
