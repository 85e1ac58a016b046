/*
 * Garbage collection: sweep the index, then compact packs.
 *
 * Notes on the design
 *
 * GC holds gc_lock exclusively, so no put or get runs beside it; it is a
 * maintenance step, not a background task.
 *
 * Sweep: the caller's live ids go into a temporary table and one
 * transaction deletes every index row not in it. Before the commit nothing
 * has changed; after it, the dead records are merely unreferenced bytes.
 *
 * Compaction, per pack whose dead bytes reach 1/GC_DEAD_DIVISOR of it:
 *   1. copy its live records, each checked (frame, checksum, id), to the
 *      tail of the current pack, and fdatasync it;
 *   2. one transaction moves their rows to the new places, sets the
 *      current pack's committed length and deletes the old pack's row;
 *   3. unlink the old pack file and fsync the folder.
 * A crash before 2 leaves the rows on the old pack, which is intact; the
 * copies lie past the current pack's committed length and are cut at open
 * (store.c, I2). A crash between 2 and 3 leaves a pack file that no row
 * names, removed at open (I3). So no crash loses a live chunk. A pack with
 * a damaged live record is not rewritten: its record stays where verify
 * reports it, rather than being dropped by a copy.
 * A pack with no live record left is removed by steps 2 and 3 alone.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "store/store_priv.h"
#include "util/util.h"

#define GC_DEAD_DIVISOR 5 /* rewrite a pack once 20% of it is dead */

struct gc_pack {
	uint32_t id;
	uint64_t committed;
	uint64_t live;
};

struct gc_move {
	ds_chunk_id id;
	struct chunk_loc from;
	uint64_t to;
};

static int gc_sweep(struct ds_store *s, const ds_chunk_id *live, size_t n, uint64_t *removed)
{
	sqlite3_stmt *ins = NULL;
	int r;

	r = index_exec(s->wdb, "CREATE TEMP TABLE IF NOT EXISTS gc_live(id BLOB PRIMARY KEY) "
			       "WITHOUT ROWID; DELETE FROM temp.gc_live;");
	if (r == 0)
		r = index_exec(s->wdb, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	r = index_prepare(s->wdb, "INSERT OR IGNORE INTO temp.gc_live(id) VALUES(?1)", &ins);
	for (size_t i = 0; r == 0 && i < n; i++) {
		if (ds_chunk_id_is_zero(&live[i]))
			continue;
		sqlite3_bind_blob(ins, 1, live[i].b, DS_CHUNK_ID_SIZE, SQLITE_STATIC);
		r = index_errno(sqlite3_step(ins));
		sqlite3_reset(ins);
	}
	sqlite3_finalize(ins);
	if (r == 0)
		r = index_exec(s->wdb,
			       "DELETE FROM chunks WHERE id NOT IN (SELECT id FROM temp.gc_live)");
	if (r == 0) {
		*removed = (uint64_t)sqlite3_changes64(s->wdb);
		store_crash_point(-1, NULL, 0, 0);
		r = index_exec(s->wdb, "COMMIT");
	}
	if (r < 0)
		index_exec(s->wdb, "ROLLBACK");
	index_exec(s->wdb, "DROP TABLE IF EXISTS temp.gc_live");
	return r;
}

static int gc_list_packs(struct ds_store *s, struct gc_pack **out, size_t *count)
{
	sqlite3_stmt *st;
	struct gc_pack *v = NULL;
	size_t n = 0, cap = 0;
	int r, rc;

	r = index_prepare(s->wdb,
			  "SELECT p.id, p.committed, "
			  "(SELECT total(c.len) FROM chunks c WHERE c.pack = p.id) "
			  "FROM packs p ORDER BY p.id",
			  &st);
	if (r < 0)
		return r;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == cap) {
			struct gc_pack *nv;
			cap = cap ? cap * 2 : 64;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				r = -ENOMEM;
				break;
			}
			v = nv;
		}
		v[n].id = (uint32_t)sqlite3_column_int64(st, 0);
		v[n].committed = (uint64_t)sqlite3_column_int64(st, 1);
		v[n].live = (uint64_t)sqlite3_column_double(st, 2);
		n++;
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = index_errno(rc);
	sqlite3_finalize(st);
	if (r < 0) {
		free(v);
		return r;
	}
	*out = v;
	*count = n;
	return 0;
}

static int gc_list_moves(struct ds_store *s, uint32_t pack, struct gc_move **out, size_t *count)
{
	sqlite3_stmt *st;
	struct gc_move *v = NULL;
	size_t n = 0, cap = 0;
	int r, rc;

	r = index_prepare(s->wdb, "SELECT id, off, len, raw_len FROM chunks WHERE pack = ?1 "
				  "ORDER BY off", &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, pack);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == cap) {
			struct gc_move *nv;
			cap = cap ? cap * 2 : 256;
			nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				r = -ENOMEM;
				break;
			}
			v = nv;
		}
		memset(&v[n], 0, sizeof(v[n]));
		if (sqlite3_column_bytes(st, 0) == DS_CHUNK_ID_SIZE)
			memcpy(v[n].id.b, sqlite3_column_blob(st, 0), DS_CHUNK_ID_SIZE);
		v[n].from.pack = pack;
		v[n].from.off = (uint64_t)sqlite3_column_int64(st, 1);
		v[n].from.len = (uint32_t)sqlite3_column_int64(st, 2);
		v[n].from.raw_len = (uint32_t)sqlite3_column_int64(st, 3);
		n++;
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = index_errno(rc);
	sqlite3_finalize(st);
	if (r < 0) {
		free(v);
		return r;
	}
	*out = v;
	*count = n;
	return 0;
}

/* Steps 2 and 3 for one pack: move rows (if any), drop the old pack. */
static int gc_commit_pack(struct ds_store *s, uint32_t old, const struct gc_move *mv, size_t n,
			  uint64_t tail)
{
	sqlite3_stmt *up = NULL;
	char sql[96], name[PACK_NAME_MAX];
	int r;

	r = index_exec(s->wdb, "BEGIN IMMEDIATE");
	if (r < 0)
		return r;
	r = index_prepare(s->wdb, "UPDATE chunks SET pack = ?2, off = ?3 WHERE id = ?1", &up);
	for (size_t i = 0; r == 0 && i < n; i++) {
		sqlite3_bind_blob(up, 1, mv[i].id.b, DS_CHUNK_ID_SIZE, SQLITE_STATIC);
		sqlite3_bind_int64(up, 2, s->cur_pack);
		sqlite3_bind_int64(up, 3, (int64_t)mv[i].to);
		r = index_errno(sqlite3_step(up));
		sqlite3_reset(up);
	}
	sqlite3_finalize(up);
	snprintf(sql, sizeof(sql), "DELETE FROM packs WHERE id = %u", old);
	if (r == 0)
		r = index_exec(s->wdb, sql);
	if (r == 0)
		r = store_writer_commit(s, tail);
	if (r < 0) {
		index_exec(s->wdb, "ROLLBACK");
		return r;
	}
	s->cur_len = tail;
	store_crash_point(-1, NULL, 0, 0);
	store_pack_fd_drop(s, old);
	pack_name(old, name);
	if (unlinkat(s->packs_fd, name, 0) < 0)
		log_warn("store: cannot remove old pack %s: %s (removed at next open)", name,
			 strerror(errno));
	fsync(s->packs_fd);
	return 0;
}

/* Step 1 for one pack, then gc_commit_pack(). 1 when the pack was skipped.
 * *copied: bytes of live records written to the current pack. */
static int gc_rewrite_pack(struct ds_store *s, uint32_t pack, uint8_t *scratch, uint64_t *copied)
{
	_cleanup_free_ struct gc_move *mv = NULL;
	uint64_t tail;
	size_t n = 0;
	int r;

	r = gc_list_moves(s, pack, &mv, &n);
	if (r < 0)
		return r;
	r = store_writer_pack(s, false);
	if (r < 0)
		return r;
	tail = s->cur_len;
	for (size_t i = 0; i < n; i++) {
		struct iovec iov;
		r = store_read_record(s, &mv[i].id, &mv[i].from, scratch, NULL);
		if (r < 0) {
			log_warn("store: pack %08x keeps a damaged record; not compacted", pack);
			r = 1;
			goto undo;
		}
		iov.iov_base = scratch;
		iov.iov_len = mv[i].from.len;
		store_crash_point(s->cur_fd, &iov, 1, tail);
		r = pwrite_full(s->cur_fd, scratch, mv[i].from.len, tail);
		if (r < 0)
			goto undo;
		mv[i].to = tail;
		tail += mv[i].from.len;
	}
	/* The copies, and a pack just created (its header), are durable
	 * before the commit names them (I3, I4). */
	if (n > 0 || s->dir_dirty) {
		store_crash_point(-1, NULL, 0, 0);
		if (fdatasync(s->cur_fd) < 0) {
			r = -errno;
			s->sticky = -EIO;
			goto undo;
		}
	}
	if (s->dir_dirty) {
		store_crash_point(-1, NULL, 0, 0);
		if (fsync(s->packs_fd) < 0) {
			r = -errno;
			s->sticky = -EIO;
			goto undo;
		}
		s->dir_dirty = false;
	}
	*copied = tail - s->cur_len;
	r = gc_commit_pack(s, pack, mv, n, tail);
	if (r == 0)
		return 0;
undo:
	if (ftruncate(s->cur_fd, (off_t)s->cur_len) < 0)
		log_warn("store: cannot cut pack %08x back: %s", s->cur_pack, strerror(errno));
	return r;
}

/*
 * Without room for a copy of a pack's live records (the store's file system
 * is full), its dead records are freed in place instead: after the sweep's
 * commit no row points at them, and a pack is read only through rows (open
 * cuts the bytes past packs.committed, it does not parse the rest), so a
 * hole there is never seen. The pack stays a candidate for a real rewrite
 * at a later GC. *freed: bytes the file system gave back.
 */
static int gc_punch_pack(struct ds_store *s, uint32_t pack, uint64_t committed, uint64_t *freed)
{
	_cleanup_free_ struct gc_move *mv = NULL;
	char name[PACK_NAME_MAX];
	struct stat before, after;
	uint64_t at = PACK_HEADER_SIZE, blk;
	size_t n = 0;
	int fd, r;

	r = gc_list_moves(s, pack, &mv, &n); /* ordered by offset */
	if (r < 0)
		return r;
	pack_name(pack, name);
	fd = openat(s->packs_fd, name, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &before) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	blk = before.st_blksize ? (uint64_t)before.st_blksize : 4096;
	for (size_t i = 0; i <= n; i++) {
		uint64_t end = i < n ? mv[i].from.off : committed;
		uint64_t a = (at + blk - 1) / blk * blk, b = end / blk * blk;

		if (b > a && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a,
				       (off_t)(b - a)) < 0) {
			r = -errno;
			break;
		}
		if (i < n)
			at = mv[i].from.off + mv[i].from.len;
	}
	if (r == 0 && fstat(fd, &after) == 0 && after.st_blocks < before.st_blocks)
		*freed = (uint64_t)(before.st_blocks - after.st_blocks) * 512;
	close(fd);
	return r;
}

/* Whether a pack is worth rewriting: some dead bytes, and either no live
 * ones or dead ones making up 1/GC_DEAD_DIVISOR of it. */
static bool gc_wants(const struct gc_pack *p)
{
	uint64_t body = p->committed - PACK_HEADER_SIZE;
	uint64_t dead = body > p->live ? body - p->live : 0;

	return dead > 0 && (p->live == 0 || dead * GC_DEAD_DIVISOR >= body);
}

int ds_store_gc(struct ds_store *s, const ds_chunk_id *live, size_t n, struct ds_gc_stats *out)
{
	_cleanup_free_ uint8_t *scratch = malloc(store_scratch_size(s));
	_cleanup_free_ struct gc_pack *packs = NULL;
	struct ds_gc_stats st = {0};
	size_t npacks = 0;
	int r;

	if (!scratch)
		return -ENOMEM;
	pthread_rwlock_wrlock(&s->gc_lock);
	pthread_mutex_lock(&s->commit_lock);
	/* Added but unflushed chunks are committed first, so the sweep sees
	 * every row and GC's own commits are the only ones in flight. */
	r = store_flush_locked(s);
	pthread_mutex_lock(&s->write_lock);
	if (r == 0)
		r = s->sticky;
	if (r == 0)
		r = gc_sweep(s, live, n, &st.chunks_removed);
	if (r == 0)
		r = gc_list_packs(s, &packs, &npacks);
	/* Live records are copied to the pack being appended to. If that pack
	 * is itself to be compacted, start a fresh one first: else its new
	 * copies would be copied a second time when its turn comes. */
	for (size_t i = 0; r == 0 && i < npacks; i++)
		if (packs[i].id == s->cur_pack && gc_wants(&packs[i]))
			r = store_writer_pack(s, true);
	if (r == -ENOSPC)
		r = 0; /* no room for a new pack: the rewrite below punches instead */
	for (size_t i = 0; r == 0 && i < npacks; i++) {
		struct gc_pack *p = &packs[i];
		uint64_t copied = 0;

		if (!gc_wants(p))
			continue;
		r = gc_rewrite_pack(s, p->id, scratch, &copied);
		if (r == -ENOSPC) {
			uint64_t freed = 0;
			r = gc_punch_pack(s, p->id, p->committed, &freed);
			if (r == -EOPNOTSUPP)
				r = -ENOSPC; /* no holes here either: the store is full */
			st.bytes_freed += freed;
			continue;
		}
		if (r == 1) {
			r = 0;
			continue;
		}
		if (r < 0)
			break;
		st.packs_rewritten++;
		st.bytes_freed += p->committed - copied;
	}
	if (r == 0)
		index_exec(s->wdb, "PRAGMA wal_checkpoint(PASSIVE)");
	/* GC committed every tail it wrote (or cut it back): no pack has
	 * bytes waiting for a flush, and a stale tail left in the dirty list
	 * would move a pack's committed length backwards. */
	for (size_t i = 0; i < s->ndirty; i++)
		if (s->dirty[i].fd != s->cur_fd)
			close(s->dirty[i].fd);
	s->ndirty = 0;
	pthread_mutex_unlock(&s->write_lock);
	pthread_mutex_unlock(&s->commit_lock);
	pthread_rwlock_unlock(&s->gc_lock);
	if (out)
		*out = st;
	return r;
}
