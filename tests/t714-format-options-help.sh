# -o with "help" (or "?") among its items, as qemu-img's has_help_option,
# the same for create, convert and amend (one -o parser in cmd/): the
# format's options are listed and nothing else happens; measure refuses it
# as qemu-img measure does.
. "$(dirname "$0")/lib.sh"
need qemu-img

ok qemu-img create -q -f qcow2 am.qcow2 1M
for o in help compat=1.1,help '?' lazy_refcounts=on,?; do
    ok imgtool amend -o "$o" am.qcow2
    expect_eq "$(out | head -n 1)" "Amend options for 'qcow2':" "amend -o $o"
    expect_match "$(out)" "^  refcount_bits=<num> +- Width of a reference count entry in bits"
    ok imgtool create -f qcow2 -o "$o" new.qcow2
    expect_eq "$(out | head -n 1)" "Supported options:" "create -o $o"
    [ ! -e new.qcow2 ] || die "create -o $o created an image"
    ok imgtool convert -O qcow2 -o "$o"
    expect_eq "$(out | head -n 1)" "Supported qcow2 options:" "convert -o $o"
done
# amend -o ...,help changed nothing.
expect_match "$(qemu-img info am.qcow2)" "compat: 1.1"
expect_match "$(qemu-img info am.qcow2)" "lazy refcounts: false"
for o in help compat=1.1,help; do
    expect_status 1 qemu-img measure -O qcow2 --size 1M -o "$o"
    expect_status 1 imgtool measure -O qcow2 --size 1M -o "$o"
    expect_eq "$(err | head -n 1)" "imgtool measure: Invalid parameter 'help'" "measure -o $o"
done
passed
