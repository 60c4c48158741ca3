# The command line: help, version, usage errors and exit statuses.
. "$(dirname "$0")/lib.sh"

ok imgtool --version
expect_match "$(out)" '^imgtool version [0-9]+\.[0-9]+\.[0-9]+$'
ok imgtool help
expect_match "$(out)" 'convert +copy an image'
ok imgtool help create
expect_match "$(out)" '^imgtool create - create a new disk image'
ok imgtool create --help
expect_match "$(out)" 'backing-format'

# Usage errors: one line plus a hint, exit 1.
expect_status 1 imgtool
expect_status 1 imgtool frobnicate
expect_eq "$(err | head -n 1)" "imgtool: unknown command 'frobnicate'"
expect_status 1 imgtool info --bogus
expect_eq "$(err)" "imgtool info: --bogus: unknown option
Try 'imgtool info --help' for more information."
expect_status 1 imgtool info
expect_match "$(err | head -n 1)" '^imgtool info: missing argument'
expect_status 1 imgtool create x.img 1Q
expect_match "$(err | head -n 1)" "size '1Q' is not a valid size"
expect_status 1 imgtool create x.img
expect_match "$(err | head -n 1)" 'give the image size'
expect_status 1 imgtool info --output=xml x.img
expect_status 1 imgtool help nosuch
# compare keeps 1 for "different", so its usage errors are 2.
expect_status 2 imgtool compare onlyone
expect_status 1 imgtool io -c 'frob 0 1' x.img
expect_match "$(err | head -n 1)" "unknown io command 'frob 0 1'"

# Unreadable files: one line naming the file, exit 1.
expect_status 1 imgtool info nonexistent.img
expect_eq "$(err)" "imgtool: nonexistent.img: cannot open: No such file or directory"
mkdir adir
expect_status 1 imgtool info adir
expect_eq "$(err)" "imgtool: adir: is a directory, not an image"
expect_status 2 imgtool compare nonexistent.img nonexistent.img
expect_status 1 imgtool create -f nosuchfmt x.img 1M
expect_match "$(err)" "unknown format 'nosuchfmt'"
expect_status 1 imgtool create -f raw -o cluster_size=64k x.img 1M
expect_match "$(err)" "format 'raw' does not support option 'cluster_size'"
[ ! -e x.img ] || die "failed create left x.img behind"
ls -a | grep -q imgtool-tmp && die "failed create left a temporary file"
# check: raw has no metadata to check, exit 63 as qemu-img.
ok imgtool create -q -f raw r.raw 1M
expect_status 63 imgtool check r.raw
expect_eq "$(err)" "imgtool: r.raw: format 'raw' does not support checks"
expect_status 1 imgtool check -r bogus r.raw
expect_status 1 imgtool check -r all -U r.raw
passed
