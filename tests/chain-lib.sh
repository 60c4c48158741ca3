# Helpers for the backing-chain tests (tests/t4*-commit*.sh,
# t4*-rebase*.sh), sourced after lib.sh.  A chain is built once in src/
# (backing names are relative), copied to mine/ and theirs/, changed there
# by imgtool and by qemu-img with the same arguments, and the results are
# compared file by file.
need qemu-img qemu-io

qio() { qemu-io -f qcow2 "$@" >/dev/null || die "qemu-io $*"; }

# new_case: an empty src/ for the next chain.
new_case() { rm -rf src mine theirs view-before.raw; mkdir src; }

# run_both COMMAND ARGS...: "imgtool COMMAND ARGS" in mine/ and "qemu-img
# COMMAND ARGS" in theirs/, each on a fresh copy of src/; what src/top.qcow2
# reads is saved first (view-before.raw).  Both must succeed and print the
# same.
run_both() {
    rm -rf mine theirs
    cp -r src mine
    cp -r src theirs
    ok qemu-img convert -U -O raw src/top.qcow2 view-before.raw
    (cd mine && "$IMGTOOL" "$@") >mine.out 2>&1 || die "imgtool $*: $(cat mine.out)"
    (cd theirs && qemu-img "$@") >theirs.out 2>&1 || die "qemu-img $*: $(cat theirs.out)"
    expect_eq "$(cat mine.out)" "$(cat theirs.out)" "output of $1"
}

# same_files FILE...: each file reads the same in mine/ and theirs/ (through
# its chain), has the same virtual size and backing file, and qcow2 files
# are clean.
same_files() {
    local f
    for f in "$@"; do
        same_content "mine/$f" "theirs/$f"
        case $f in *.qcow2) qemu_clean "mine/$f" ;; esac
        expect_eq "$(info_fields "mine/$f")" "$(info_fields "theirs/$f")" "info of $f"
    done
}

# info_fields IMG: virtual size and backing file name and format.
info_fields() {
    qemu-img info --output=json -U "$1" |
        grep -E '"(virtual-size|backing-filename|backing-filename-format)"'
}

# reads_as_before IMG: IMG reads what src/top.qcow2 read before the change.
reads_as_before() { same_content -F raw "$1" view-before.raw; }

# own_extents IMG: the ranges IMG allocates itself, data or zeroes
# ("start length" lines, adjacent ones joined).
own_extents() {
    qemu-img map --output=json -U "$1" |
        sed -n 's/.*"start": \([0-9]*\), "length": \([0-9]*\), "depth": 0, "present": true.*/\1 \2/p' |
        awk '{ if (have && s + l == $1) l += $2; else { if (have) print s, l; s = $1; l = $2; have = 1 } }
             END { if (have) print s, l }'
}
