/* imgtool's own record in a qcow2 image (blockdrv.record_get/record_set):
 * one header extension of a type QEMU does not know.  qcow2.txt ("Header
 * extensions") lets a reader ignore unknown extensions, and QEMU 7.2 keeps
 * the ones it read and writes them back each time it rewrites the header
 * (checked with qemu-img amend, resize, rebase, commit, snapshot, bitmap and
 * check -r, and by a VM's writes; tests/t431-chain-record-qemu.sh), so the
 * record stays with the file.  qemu-img convert makes a new file without
 * it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

static struct qcow2_ext *find_record(struct qcow2_state *s)
{
    for (size_t i = 0; i < s->nb_exts; i++)
        if (s->exts[i].type == QCOW2_EXT_IMGTOOL_RECORD)
            return &s->exts[i];
    return NULL;
}

const void *qcow2_record_get(struct blockdev *bs, size_t *len)
{
    struct qcow2_ext *x = find_record(bs->opaque);
    *len = x ? x->len : 0;
    return x ? x->data : NULL;
}

/* Replace the record in s->exts by (data, len), len 0 removing it. */
static int put_record(struct qcow2_state *s, const void *data, size_t len, struct err *e)
{
    struct qcow2_ext *x = find_record(s);
    if (!len) {
        if (x) {
            free(x->data);
            *x = s->exts[--s->nb_exts];
        }
        return 0;
    }
    uint8_t *copy = malloc(len);
    if (!copy)
        return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
    memcpy(copy, data, len);
    if (!x) {
        struct qcow2_ext *n = realloc(s->exts, (s->nb_exts + 1) * sizeof(*n));
        if (!n) {
            free(copy);
            return err_set(e, ENOMEM, "%s: out of memory", s->bs->filename);
        }
        s->exts = n;
        x = &s->exts[s->nb_exts++];
        x->data = NULL;
        x->type = QCOW2_EXT_IMGTOOL_RECORD;
    }
    free(x->data);
    x->data = copy;
    x->len = (uint32_t)len;
    return 0;
}

/* The header is rewritten whole (one write of the header cluster, then a
 * flush), the way every header change is made; on failure the old record
 * is put back in memory. */
int qcow2_record_set(struct blockdev *bs, const void *data, size_t len, struct err *e)
{
    struct qcow2_state *s = bs->opaque;
    if (len > s->cluster_size)
        return err_set(e, ENOSPC, "%s: the record (%zu bytes) does not fit in the header "
                       "cluster", bs->filename, len);
    size_t old_len;
    const void *old = qcow2_record_get(bs, &old_len);
    void *saved = old_len ? malloc(old_len) : NULL;
    if (old_len && !saved)
        return err_set(e, ENOMEM, "%s: out of memory", bs->filename);
    if (old_len)
        memcpy(saved, old, old_len);
    int ret = put_record(s, data, len, e);
    if (ret == 0 && (ret = qcow2_update_header(s, e)) < 0)
        put_record(s, saved, old_len, &(struct err){ 0 });
    free(saved);
    return ret;
}
