# The man pages: they lint clean, and they cannot drift from the code.
# Every command of "imgtool help" has a page man/imgtool-<command>.1 whose
# NAME line is the command's summary, which documents every option that
# "imgtool <command> --help" lists with the same short and long spelling,
# and which imgtool(1) lists; there is no page for a command that does not
# exist.
top=$(cd "$(dirname "$0")/.." && pwd)
. "$(dirname "$0")/lib.sh"
need man mandoc
man_dir=$top/man
[ -f "$man_dir/imgtool.1" ] || die "no $man_dir/imgtool.1"

# A page as plain text: no overstriking, no line breaks inside paragraphs
# that could split an option name.
render() { mandoc -T ascii -O width=400 "$1" | sed 's/.\x08//g'; }

# 1. Both linters are silent on every page.
for page in "$man_dir"/*.1; do
    name=$(basename "$page")
    checks=$((checks + 1))
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null) ||
        die "man -l $name failed: $warnings"
    [ -z "$warnings" ] || die "man --warnings -l $name: $warnings"
    checks=$((checks + 1))
    lint=$(mandoc -T lint -W warning "$page" 2>&1) || die "mandoc -T lint $name: $lint"
    [ -z "$lint" ] || die "mandoc -T lint $name: $lint"
    text=$(render "$page")
    for section in NAME SYNOPSIS DESCRIPTION OPTIONS 'EXIT STATUS' EXAMPLES 'SEE ALSO'; do
        expect_match "$text" "^$section\$" "$name has no $section section:"
    done
done
overview=$(render "$man_dir/imgtool.1")
expect_match "$overview" '^IMAGE LOCKING$' "imgtool.1 has no IMAGE LOCKING section:"
expect_match "$overview" 'qemu-img\(1\)' "imgtool.1 does not refer to qemu-img(1):"

# 2. The commands, as "imgtool help" lists them: "  NAME   SUMMARY".
ok imgtool help
commands=$(out | sed -n '/^Commands:$/,/^$/p' | sed -n 's/^  \([a-z][a-z0-9-]*\)  *\(.*\)$/\1\t\2/p')
[ "$(wc -l <<<"$commands")" -ge 7 ] || die "cannot read the command list of 'imgtool help': $(out)"

while IFS=$'\t' read -r cmd summary; do
    page=$man_dir/imgtool-$cmd.1
    checks=$((checks + 1))
    [ -f "$page" ] || die "command '$cmd' has no man page man/imgtool-$cmd.1"

    # NAME: "imgtool-CMD \- SUMMARY" in the source, escapes undone.
    name_line=$(sed -n '/^\.SH NAME/{n;p;q}' "$page" |
                sed 's/\\-/-/g; s/\\(aq/'"'"'/g; s/\\&//g; s/\\e/\\/g')
    expect_eq "$name_line" "imgtool-$cmd - $summary" "NAME line of imgtool-$cmd.1"

    # Every option of --help, spelled the same ("-f, --format", "--output",
    # or "-W" at the start of a line).
    ok imgtool "$cmd" --help
    help=$(out)
    text=$(render "$page")
    options=$(sed -n 's/^ \{1,\}\(-[A-Za-z0-9], --[a-z0-9-]*\).*/\1/p; s/^ \{4,\}\(--[a-z0-9-]*\).*/\1/p' <<<"$help")
    [ -n "$options" ] || die "no options found in 'imgtool $cmd --help'"
    while read -r opt; do
        [ -n "$opt" ] || continue
        checks=$((checks + 1))
        grep -qE -- "^ +$opt( |,|=|\$)" <<<"$text" ||
            die "imgtool-$cmd.1 does not document '$opt' (from 'imgtool $cmd --help')"
    done < <(sed -n 's/^ \{1,\}\(-[A-Za-z0-9]\)  .*/\1/p; s/^ \{1,\}\(-[A-Za-z0-9]\)$/\1/p' <<<"$help")
    while read -r opt; do
        checks=$((checks + 1))
        grep -qF -e "$opt" <<<"$text" ||
            die "imgtool-$cmd.1 does not document '$opt' (from 'imgtool $cmd --help')"
    done <<<"$options"

    # The overview lists the command and its page.
    expect_match "$overview" "imgtool-$cmd\\(1\\)" "imgtool.1 does not mention imgtool-$cmd(1):"
done <<<"$commands"

# 3. No page for a command that does not exist.
for page in "$man_dir"/imgtool-*.1; do
    cmd=$(basename "$page" .1); cmd=${cmd#imgtool-}
    checks=$((checks + 1))
    cut -f1 <<<"$commands" | grep -qx -- "$cmd" ||
        die "man/imgtool-$cmd.1 documents '$cmd', which 'imgtool help' does not list"
done
passed
