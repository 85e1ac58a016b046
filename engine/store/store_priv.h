/* The store's shared state, for store.c and gc.c. */
#ifndef DSNAP_STORE_PRIV_H
#define DSNAP_STORE_PRIV_H
#ifndef DSNAP_INTERNAL
#error "engine/store/store_priv.h is private to libdsnap"
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <sys/uio.h>

#include <sqlite3.h>

#include <dsnap/store.h>

#include "chunk/chunk.h"
#include "store/idset.h"
#include "store/index.h"
#include "store/pack.h"

#define STORE_READERS 4
#define STORE_PACK_SIZE_DEFAULT (256ull << 20)

/* A row appended but not committed yet. */
struct pend {
	ds_chunk_id id;
	uint64_t off;
	uint32_t pack, len, raw_len;
};

struct pend_vec {
	struct pend *v;
	size_t n, cap;
};

/* A pack written since the last flush, with the tail to commit. */
struct dirty_pack {
	uint32_t id;
	int fd;        /* the current pack's fd, or a rotated pack's own */
	uint64_t tail;
};

struct store_reader {
	pthread_mutex_t lock;
	sqlite3 *db;
	sqlite3_stmt *lookup;
};

struct ds_store {
	int dirfd;
	int packs_fd;
	int lock_fd; /* holds flock(LOCK_EX) while the store is open */
	uint32_t chunk_size;
	uint64_t pack_size;
	uint8_t secret[CHUNK_SECRET_SIZE];
	uint8_t store_id[16];

	/* Puts, gets and verify take it shared; GC takes it exclusive. */
	pthread_rwlock_t gc_lock;

	/*
	 * Appending, under write_lock: records go to the tail of the current
	 * pack and their rows wait in `pending` until a flush commits them.
	 */
	pthread_mutex_t write_lock;
	uint32_t cur_pack; /* pack appended to; 0 = none yet */
	atomic_uint max_pack; /* highest pack id ever seen; ids are never reused.
			       * Readers load it to check pack ids read from the index. */
	int cur_fd;
	uint64_t cur_len;  /* the current pack's tail: bytes written to it */
	struct pend_vec pending;      /* appended rows no flush has taken yet */
	struct idset pending_ids;     /* their ids */
	struct idset syncing_ids;     /* ids of the rows a running flush took */
	const struct pend_vec *syncing; /* those rows (the flush's own), or NULL */
	struct dirty_pack *dirty;     /* packs with bytes past their committed length */
	size_t ndirty, dirty_cap;
	uint64_t pending_bytes;
	uint64_t append_seq;          /* counts appended batches */
	int sticky;        /* set after a failed fdatasync: memory and disk may differ */
	bool dir_dirty;    /* a pack was created since packs/ was last fsynced */

	/* Committing, under commit_lock (taken before write_lock). */
	pthread_mutex_t commit_lock;
	sqlite3 *wdb;
	sqlite3_stmt *w_insert, *w_set_committed;
	atomic_uint_fast64_t durable_seq; /* batches up to this one are committed */

	/* Staging buffers kept between puts (mapping fresh ones costs page faults). */
	pthread_mutex_t pool_lock;
	struct { uint8_t *buf; size_t cap; } pool[8];
	unsigned npool;

	struct store_reader readers[STORE_READERS];
	atomic_uint next_reader;

	pthread_mutex_t fd_lock;
	int *fds; /* read-only fds by pack id, -1 when not open */
	uint32_t nfds;
};

/* Read-only fd of a pack, opened on first use and kept. -errno on failure. */
int store_pack_fd(struct ds_store *s, uint32_t pack);
/* Closes a cached fd (before its pack is removed). Caller holds gc_lock exclusive. */
void store_pack_fd_drop(struct ds_store *s, uint32_t pack);

/* Makes sure the writer has a pack with room; rotates to a new pack when the
 * current one has passed pack_size or when force is set. The new pack is
 * not synced: whoever commits its first row fdatasyncs it and, while
 * dir_dirty is set, fsyncs packs/ first. Caller holds write_lock. */
int store_writer_pack(struct ds_store *s, bool force);

/* Sets the current pack's committed length to new_len (creating its row
 * when new) and commits wdb's open transaction. For GC, which holds
 * every lock. */
int store_writer_commit(struct ds_store *s, uint64_t new_len);

/* Commits every appended row (one fdatasync per written pack, then one
 * transaction). Caller holds commit_lock, not write_lock. */
int store_flush_locked(struct ds_store *s);

/*
 * Reads the record at loc into scratch (REC_HEADER_SIZE + compress bound of
 * chunk_size bytes) and checks frame, checksum and that it is id's record.
 * When out is not NULL it also decodes into out and checks that the bytes
 * hash to id. Failures are logged with the chunk id, pack and offset.
 */
int store_read_record(struct ds_store *s, const ds_chunk_id *id, const struct chunk_loc *loc,
		      uint8_t *scratch, void *out);
uint32_t store_scratch_size(const struct ds_store *s);

/*
 * Test hook for crash tests: after `n` more write steps (pack writes,
 * fdatasyncs, commits) the process kills itself with SIGKILL; a pack write
 * that is the last step writes only part of its bytes first. 0 disables.
 */
void store_set_crash_after(long n);
/* Called at each write step; fd/iov/off describe a pack write, or fd < 0. */
void store_crash_point(int fd, const struct iovec *iov, int cnt, uint64_t off);

#endif
