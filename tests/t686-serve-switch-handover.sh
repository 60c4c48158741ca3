# imgtool serve --mirror --on-complete=switch hands the job's open target
# to the export: the target is opened once for the whole run (a new one
# under its temporary name, renamed into place while open), so it never
# goes without its image locks between the mirror's close and the export's
# open, where another process could take it.  Under --cache=none the job
# already writes it with O_DIRECT, as the export goes on doing.  Checked
# through strace's record of the server's opens and renames; after the
# switch the target is locked (qemu-img without -U is refused), no
# temporary file is left, the switched event names the target, writes
# land in it, and after SIGTERM it equals a model and is clean.
. "$(dirname "$0")/serve-mirror-lib.sh"
need strace

# LeakSanitizer cannot run under ptrace.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
cat >strace-imgtool <<EOF
#!/bin/sh
exec strace -f -o "$T/trace.\$\$" -e trace=openat,rename "$IMGTOOL" "\$@"
EOF
chmod +x strace-imgtool
real_imgtool=$IMGTOOL

for cache in writeback none; do
    rm -f src.qcow2 tgt.qcow2 trace.* model.raw
    ok qemu-img create -q -f qcow2 src.qcow2 32M
    ok qemu-io -c 'write -P 7 0 4M' -c 'write -P 8 20M 1M' src.qcow2
    ok qemu-img convert -O raw src.qcow2 model.raw
    IMGTOOL=$T/strace-imgtool
    serve_bg s -t --cache=$cache --control="$T/c.sock" --mirror="$T/tgt.qcow2" \
        --copy-mode=write-blocking --on-complete=switch src.qcow2
    IMGTOOL=$real_imgtool
    wait_event s ready
    ok qemu-io -f raw -c 'write -P 9 1M 64k' "$(uri s)"
    ok qemu-io -f raw -c 'write -P 9 1M 64k' model.raw
    ok imgtool job complete --control="$T/c.sock"
    wait_event s switched
    expect_match "$(grep '"event": "switched"' s.ev)" '"image": "'"$T"'/tgt.qcow2"' \
        "switched names the target"
    expect_eq "$(ls -A | grep -c 'tgt\.qcow2.')" 0 "no temporary file left ($cache)"
    expect_status 1 qemu-img info tgt.qcow2
    expect_match "$(err)" 'lock' "the served target is locked ($cache)"
    ok qemu-io -f raw -c 'write -P 10 2M 64k' "$(uri s)"
    ok qemu-io -f raw -c 'write -P 10 2M 64k' model.raw
    expect_eq "$(server_status s TERM)" 0 "exit status after SIGTERM ($cache)"

    # The server's opens of the target: under its temporary name only, by
    # the job (the create's own open is O_CREAT and closed before it; with
    # O_DIRECT a second, buffered descriptor for unaligned requests),
    # read-write, never again under its own name.
    cat trace.* >trace
    opens=$(grep -E 'openat\(.*tgt\.qcow2' trace | grep -v O_CREAT | grep -v '= -1')
    expect_eq "$(printf '%s\n' "$opens" | grep -c 'tgt\.qcow2"')" 0 \
        "the target never opened again under its own name ($cache): $opens"
    expect_match "$opens" 'tgt\.qcow2\.imgtool-tmp-[0-9]+", O_RDWR' "opened read-write by the job ($cache)"
    if [ $cache = none ]; then
        expect_match "$opens" 'O_DIRECT' "the job writes the target with O_DIRECT under --cache=none"
    fi
    expect_match "$(grep -E 'rename\(.*tgt\.qcow2' trace)" '= 0' "renamed into place ($cache)"

    ok qemu-img compare -f raw -F qcow2 model.raw tgt.qcow2
    qemu_clean tgt.qcow2
done
passed
