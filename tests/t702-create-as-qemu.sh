# imgtool create prints qemu-img create's "Formatting ..." line, byte for
# byte (every option of the format that was given or has a default, in
# qemu-img's order, sizes in bytes), and nothing on stdout when it fails;
# -u creates an overlay of a backing file that does not open; -o help
# lists the options imgtool has in qemu-img's layout.
. "$(dirname "$0")/lib.sh"
need qemu-img

ok qemu-img create -q -f qcow2 base.qcow2 8M
# same_create ARGS... (the image is n.qcow2 or n.raw): same stdout and status.
same_create() {
    qrc=0 irc=0
    rm -f n.qcow2 n.raw
    qemu-img create "$@" > q.out 2> q.err || qrc=$?
    rm -f n.qcow2 n.raw
    imgtool create "$@" > i.out 2> i.err || irc=$?
    expect_eq "$irc" "$qrc" "create $*: exit status ($(cat q.err i.err))"
    expect_eq "$(cat i.out)" "$(cat q.out)" "create $*: output"
}
same_create n.raw 1M
same_create -f raw n.raw 1.5G
same_create -f qcow2 n.qcow2 1G
same_create -f qcow2 -o cluster_size=4k,compat=0.10 n.qcow2 1G
same_create -f qcow2 -o compat=v3,refcount_bits=4,lazy_refcounts=on n.qcow2 3M
same_create -f qcow2 -o extended_l2=on,compression_type=zstd,preallocation=metadata n.qcow2 1M
same_create -f qcow2 -o size=2M n.qcow2
same_create -f qcow2 -b base.qcow2 -F qcow2 n.qcow2
same_create -f qcow2 -b base.qcow2 -F qcow2 n.qcow2 16M
same_create -f qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 n.qcow2
same_create -f qcow2 -u -b missing.qcow2 -F qcow2 n.qcow2 1M
expect_eq "$(qemu-img info --output=json n.qcow2 | grep -c '"backing-filename": "missing.qcow2"')" 1 \
    "-u: backing file name"
# Without -u a backing file that does not open is an error, and -u needs a size.
same_create -f qcow2 -b missing.qcow2 -F qcow2 n.qcow2 1M
expect_eq "$irc" 1 "missing backing file"
[ ! -e n.qcow2 ] || die "an image was created over a missing backing file"
expect_status 1 imgtool create -f qcow2 -u -b missing.qcow2 -F qcow2 n.qcow2
# Failures print nothing on stdout (qemu-img prints the line first here).
expect_status 1 imgtool create -f qcow2 -o cluster_size=3k n.qcow2 1M
expect_eq "$(out)" "" "output before an error"
expect_status 1 imgtool create -f qcow2 -o bogus=1 n.qcow2 1M
expect_eq "$(out)" "" "output before an error"
# -o help: qemu-img's lines for the options imgtool has (qemu-img has more:
# encryption, external data files, nocow, extent_size_hint).
for f in qcow2 raw; do
    for target in "" n.$f; do
        ok imgtool create -f $f -o help $target
        i=$(out)
        q=$(qemu-img create -f $f -o help $target)
        expect_eq "$(grep -vxFf <(echo "$q") <<<"$i")" "" "-o help $f $target: lines qemu-img does not print"
        expect_eq "$(head -n 1 <<<"$i")" "$(head -n 1 <<<"$q")" "-o help $f $target: title"
        expect_match "$i" "size=<size> +- Virtual disk size" "-o help $f"
    done
done
ok imgtool create -f qcow2 -o cluster_size=4k,help
expect_match "$(out)" "^  refcount_bits=<num>    - Width of a reference count entry in bits$"
[ ! -e n.qcow2 ] || die "-o help created an image"
passed
