/*
 * Manifests and image copies.
 *
 * A manifest is the ordered list of chunk ids of one disk image. It is
 * itself stored as chunks, under a tree of node chunks, so consecutive
 * manifests of one disk share almost all their chunks. A manifest is named
 * by its root id. Formats: doc/store-format.md.
 */
#ifndef DSNAP_SNAPSHOT_H
#define DSNAP_SNAPSHOT_H

#include <stdint.h>

#include <dsnap/chunk.h>
#include <dsnap/store.h>

struct ds_manifest {
	uint32_t chunk_size;
	uint64_t disk_size;
	uint64_t count; /* ceil(disk_size / chunk_size) entries */
	ds_chunk_id *ids;
};

/* A manifest for a disk of disk_size bytes, every entry the zero id.
 * NULL on -ENOMEM or a disk too large to index (count overflows). */
DS_EXPORT struct ds_manifest *ds_manifest_new(uint32_t chunk_size, uint64_t disk_size);
DS_EXPORT void ds_manifest_free(struct ds_manifest *m);

/* Stores m (chunk size must be the store's) and returns its root id. */
DS_EXPORT int ds_manifest_save(struct ds_store *s, const struct ds_manifest *m,
			       ds_chunk_id *root);

/* Loads the manifest named by root. -EBADMSG for a malformed one. *out is
 * yours (ds_manifest_free). */
DS_EXPORT int ds_manifest_load(struct ds_store *s, const ds_chunk_id *root,
			       struct ds_manifest **out);

/*
 * Appends every id a manifest keeps alive (its tree's chunks and the disk's
 * chunks, zero ids left out) to the growable array *ids (*n used, *cap
 * allocated), for ds_store_gc(). Duplicates are fine.
 */
DS_EXPORT int ds_manifest_refs(struct ds_store *s, const ds_chunk_id *root, ds_chunk_id **ids,
			       size_t *n, size_t *cap);

typedef void (*ds_progress_fn)(uint64_t done, uint64_t total, void *opaque);

/*
 * Copies size bytes of fd (an image file or block device that nothing
 * changes during the copy: the caller guarantees it) into the store and
 * saves the manifest. Holes (SEEK_DATA) and all-zero chunks are not read
 * or stored. progress may be NULL.
 */
DS_EXPORT int ds_image_backup(struct ds_store *s, int fd, uint64_t size, ds_chunk_id *root,
			      ds_progress_fn progress, void *opaque);

/*
 * Writes the image named by root to fd, which must be a new empty file or
 * a device of at least the image's size. A file is sized first, and zero
 * chunks are left as holes (for a device they are written as zeros). Every
 * chunk is verified as it is read; a bad one fails with -EBADMSG.
 */
DS_EXPORT int ds_image_restore(struct ds_store *s, const ds_chunk_id *root, int fd,
			       ds_progress_fn progress, void *opaque);

#endif
