/*
 * The content-addressed chunk store.
 *
 * A store is a folder: `store.db` (SQLite, WAL) indexes chunk ids to records
 * in append-only pack files under `packs/`. Chunks are LZ4-compressed (raw
 * when LZ4 does not shrink them); all-zero chunks are never stored. Every
 * read recomputes the chunk's id and fails with -EBADMSG when it differs.
 * The on-disk format is in doc/store-format.md.
 *
 * Durability: when ds_store_put() returns 0, every chunk it was given is on
 * stable storage (pack bytes fdatasync'ed, then the index rows committed);
 * ds_store_add() defers that to the next flush.
 * A crash at any moment leaves a store that opens, verifies clean and holds
 * every chunk whose put had returned.
 *
 * Threads: a ds_store may be used from several threads at once. Hashing and
 * compression run in the calling thread, so callers that put from several
 * threads use several cores; the append and commit are serialised.
 */
#ifndef DSNAP_STORE_H
#define DSNAP_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <dsnap/chunk.h>
#include <dsnap/dsnap.h>

struct ds_store;

struct ds_store_options {
	uint32_t chunk_size;  /* power of two, DS_CHUNK_SIZE_MIN..MAX; 0 = default */
	uint64_t pack_size;   /* a pack is closed past this size; 0 = 256 MiB */
};

/*
 * Creates a new, empty store in dir (created if missing; it must be empty
 * of store files). A random secret for chunk ids is made here and never
 * changes. Returns -EEXIST if a store is already there, -EINVAL for a bad
 * chunk size.
 */
DS_EXPORT int ds_store_create(const char *dir, const struct ds_store_options *opt);

/*
 * Opens the store in dir. Recovery runs here: pack tails past their last
 * committed length are cut and packs no index row points to are removed.
 * Returns -ENOENT when there is no store, -EBADMSG when the index is not a
 * dsnap store or is damaged, -EPROTONOSUPPORT for a newer format.
 * On success *out is yours; release it with ds_store_close().
 */
DS_EXPORT int ds_store_open(const char *dir, struct ds_store **out);

/* Closes the store. Nothing in flight may use it any more. NULL is fine. */
DS_EXPORT void ds_store_close(struct ds_store *s);

DS_EXPORT uint32_t ds_store_chunk_size(const struct ds_store *s);

/* Computes the id a chunk of these bytes has in this store (zero id for zeros). */
DS_EXPORT void ds_store_chunk_id(const struct ds_store *s, const void *data, size_t len,
				 ds_chunk_id *id);

/*
 * One chunk of a batch.
 * put: data/len in (len 1..chunk_size), id and stored out. stored is true when
 *      this call wrote the chunk (false for zeros and chunks already present).
 * get: id in; data must hold chunk_size bytes; len out. The zero id yields
 *      len = chunk_size zero bytes.
 * stored_len: put out: the record bytes this chunk added to the store (0 when not stored).
 * err: 0 or the negative errno of this chunk alone.
 */
struct ds_chunk {
	ds_chunk_id id;
	void *data;
	uint32_t len;
	bool stored;
	int err;
	uint32_t stored_len;
};

/*
 * Stores n chunks and returns once they are durable (one fdatasync per
 * pack written and one index commit, shared with whatever other batches
 * are waiting: group commit). Returns 0 when all are stored, else an error;
 * the chunks of a failed batch may still turn up in the store later (a
 * requeued commit), which is harmless; chunks present before are never
 * lost. -EINVAL for a chunk with no data, length 0 or over the chunk size;
 * -E2BIG when the batch's compression bounds pass 4 GiB (about 1000 chunks
 * of 4 MiB): split it. -ENOSPC leaves the store usable once space is freed; after a failed
 * fdatasync the store refuses writes (-EIO) until it is reopened.
 */
DS_EXPORT int ds_store_put(struct ds_store *s, struct ds_chunk *chunks, size_t n);

/*
 * Like ds_store_put() but does not wait for durability: the chunks are
 * readable (ds_store_get) when it returns, and durable after the next flush
 * (ds_store_flush(), any ds_store_put(), ds_store_close(), or automatically
 * once 1 GiB is waiting); ds_store_has() sees them once flushed. ids and
 * stored are filled in as by put. For copiers that keep compressing while
 * earlier batches reach the disk.
 */
DS_EXPORT int ds_store_add(struct ds_store *s, struct ds_chunk *chunks, size_t n);

/* Makes every chunk added so far durable. */
DS_EXPORT int ds_store_flush(struct ds_store *s);

/*
 * Reads n chunks. Returns 0 when every chunk was read and verified, else the
 * first error; each chunk's err says which failed: -ENOENT for an unknown id,
 * -EBADMSG for a record whose bytes do not hash to its id or whose frame or
 * index row is damaged (logged with the chunk id, pack and offset), -ENODATA
 * for a record past its pack's end (a truncated pack), -EIO for a failed
 * read.
 */
DS_EXPORT int ds_store_get(struct ds_store *s, struct ds_chunk *chunks, size_t n);

/* present[i] = whether ids[i] is in the store (the zero id always is). */
DS_EXPORT int ds_store_has(struct ds_store *s, const ds_chunk_id *ids, size_t n, bool *present);

struct ds_store_stats {
	uint64_t chunks;       /* chunks in the index */
	uint64_t raw_bytes;    /* their uncompressed size */
	uint64_t stored_bytes; /* their record bytes in packs */
	uint64_t packs;
	uint64_t pack_bytes;   /* committed bytes of all packs, dead records included */
};
DS_EXPORT int ds_store_stats(struct ds_store *s, struct ds_store_stats *st);

/*
 * Reads every chunk of the store and checks it. bad(), when not NULL, is
 * called for each bad chunk with its id and the error (-EBADMSG for a
 * damaged record, -EIO for an unreadable one, -ENODATA for an index row past
 * its pack's end). Returns the number of bad chunks (>= 0) or a negative
 * errno when verify could not run.
 */
typedef void (*ds_store_bad_fn)(const ds_chunk_id *id, int err, void *opaque);
DS_EXPORT int64_t ds_store_verify(struct ds_store *s, ds_store_bad_fn bad, void *opaque);

struct ds_gc_stats {
	uint64_t chunks_removed;
	uint64_t packs_rewritten;
	uint64_t bytes_freed;
};

/*
 * Garbage collection. Every chunk whose id is not in live[0..n) is removed
 * from the index (sweep); then packs with dead records are rewritten
 * (compaction) and their space is returned to the file system. The zero id
 * may appear in live and is ignored. Puts and gets wait while it runs.
 *
 * The caller guarantees that live holds every id still referenced, including
 * ids that a writer which deduplicated against the store may reference once
 * its own work commits: run GC when no such writer is running.
 *
 * Interrupted at any point (crash, kill), the store opens with every live
 * chunk intact; at worst some dead records or a spare pack remain until the
 * next GC. st may be NULL.
 */
DS_EXPORT int ds_store_gc(struct ds_store *s, const ds_chunk_id *live, size_t n,
			  struct ds_gc_stats *st);

#endif
