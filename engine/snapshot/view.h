/*
 * A view: a snapshot read as an image, also while its copy runs (instant
 * access). Private to the engine; see view.c.
 */
#ifndef DSNAP_VIEW_H
#define DSNAP_VIEW_H
#ifndef DSNAP_INTERNAL
#error "engine/snapshot/view.h is private to libdsnap"
#endif

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <dsnap/snapshot.h>
#include <dsnap/store.h>

#include "cow/cow.h"
#include "disk/disk.h"

struct view;

/* A snapshot being copied: m is the copy's manifest (the view owns it from
 * now on), cow the live disk's tracker or NULL, pit what the copier reads. */
struct view *view_new(struct ds_store *s, struct ds_manifest *m, struct cow *cow,
		      const struct disk_pit *pit);
/* An accomplished snapshot: its manifest, owned by the view. */
struct view *view_new_done(struct ds_store *s, struct ds_manifest *m);
void view_ref(struct view *v);
void view_unref(struct view *v);

/* The copy ended (ok: its manifest is complete): reads go to the store, or
 * fail. Returns once no read uses the copy's source any more, so the caller
 * may release it (cow_copy_end, disk_pit_release). */
void view_end(struct view *v, bool ok);
/* The copy is incremental: chunks it did not read take the previous
 * snapshot's ids, trusted only once its audit passed (view_export waits
 * for the copy's end). Before the copier starts. */
void view_set_incremental(struct view *v);
/* Whether the copy ended failed (its reads fail). */
bool view_failed(struct view *v);
/* No read from now on (-EIO); returns once none is running. */
void view_close(struct view *v);

uint64_t view_size(const struct view *v);
/* Reads [off, off + len) of the image: len or -errno (-EIO once the
 * snapshot failed). */
ssize_t view_read(void *view, void *buf, size_t len, uint64_t off);
/* Writes the image into fd (a new, empty file: sparse where zero), fsynced.
 * During an incremental copy it returns once the copy has ended: -EIO if
 * it failed. */
int view_export(struct view *v, int fd);

#endif
