# make install DESTDIR=... PREFIX=/usr puts the binary and every man page
# in place, and the installed pages render.  Run from the source tree; with
# the build up to date, install only copies (it compiles nothing).
top=$(cd "$(dirname "$0")/.." && pwd)
. "$(dirname "$0")/lib.sh"
need make man install
[ -f "$top/GNUmakefile" ] || skip "no source tree at $top"

# The build that $IMGTOOL comes from: build/default or build/sanitize.
bin=$(readlink -f "$IMGTOOL")
case $bin in
"$top"/build/sanitize/imgtool) sanitize=1 ;;
"$top"/build/default/imgtool) sanitize= ;;
*) skip "IMGTOOL=$IMGTOOL is not a build of $top" ;;
esac
# Not the parent make's jobserver or flags: a plain make in the tree.
mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -C "$top" --no-print-directory SANITIZE="$sanitize" "$@"; }
mk -q "${bin#"$top"/}" || skip "the build in $top is not up to date; run make first"

# Install copies and links, and compiles nothing.
ok mk -n install DESTDIR="$T/root" PREFIX=/usr
commands=$(out | grep -vE '^(install|ln) ' || true)
expect_eq "$commands" "" "commands of 'make install' other than install and ln"

root=$T/root
ok mk install DESTDIR="$root" PREFIX=/usr
[ -x "$root/usr/bin/imgtool" ] || die "usr/bin/imgtool is not installed"
checks=$((checks + 1))
cmp -s "$root/usr/bin/imgtool" "$bin" || die "usr/bin/imgtool differs from $bin"
ok "$root/usr/bin/imgtool" --version
expect_match "$(out)" '^imgtool version [0-9]+\.[0-9]+\.[0-9]+$'

# Exactly the pages of man/, unchanged, world-readable.
expect_eq "$(cd "$root/usr/share/man/man1" && ls)" "$(cd "$top/man" && ls -- *.1)" "installed pages"
for page in "$top"/man/*.1; do
    installed=$root/usr/share/man/man1/$(basename "$page")
    checks=$((checks + 1))
    cmp -s "$page" "$installed" || die "$installed differs from $page"
    expect_eq "$(stat -c %a "$installed")" 644 "mode of $installed"
done

# The installed pages render, by file and found by name under the prefix.
warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$root/usr/share/man/man1/imgtool.1" 2>&1 >"$T/page.txt") ||
    die "man -l of the installed imgtool.1 failed: $warnings"
expect_eq "$warnings" "" "man --warnings of the installed imgtool.1"
expect_match "$(cat "$T/page.txt")" '^IMAGE LOCKING$'
ok env MANWIDTH=80 man -M "$root/usr/share/man" imgtool-convert
expect_match "$(out)" '^ +imgtool-convert - copy an image, converting its format$'

# Nothing outside DESTDIR: the tree has no stray usr/.
[ ! -e "$top/usr" ] || die "make install wrote $top/usr"
passed
