/*
 * The chunk store: pack files plus an SQLite index.
 *
 * Notes on the design
 *
 * Files. `store.db` is the index (tables meta, packs, chunks; WAL mode,
 * synchronous=FULL). `packs/NNNNNNNN.pack` are append-only files of framed
 * records. `lock` is flock()ed while a process has the store open, so two
 * processes never append to one pack. Formats: doc/store-format.md.
 *
 * The commit protocol. A batch is added in two steps, and committed by a
 * flush that may cover many batches (group commit):
 *   1. Outside any lock: hash each chunk, skip all-zero ones, compress, and
 *      frame the record (header with checksum, then payload).
 *   2. Under write_lock (append): skip chunks already committed (index),
 *      queued, or being flushed (two id sets); pwritev the new records at
 *      the current pack's tail and queue their rows.
 *   3. Under commit_lock (flush): take every queued row and the tails of
 *      the packs written since the last flush; fdatasync those packs; then
 *      one transaction inserts the rows and moves packs.committed to the
 *      taken tails. Appends go on during the fdatasync, past those tails.
 * ds_store_put() is add + flush and returns once a flush covered its batch;
 * ds_store_add() leaves the flush to a later put or ds_store_flush(), so a
 * copier keeps compressing while earlier batches reach the disk.
 * Invariants that make a crash at any point safe:
 *   I1. An index row is committed only after the bytes it points at are on
 *       stable storage (fdatasync before COMMIT).
 *   I2. packs.committed is the pack's length as of the last commit; bytes
 *       past it belong to no committed row. ds_store_open() cuts them off,
 *       so a half-written record is never visible.
 *   I3. A pack file exists, with its header, before any row naming it
 *       commits (file and folder fsynced first, by the flush or GC pass
 *       that commits the row, not at creation); a pack file with no row
 *       is an interrupted creation or an interrupted GC and is removed at
 *       open.
 *   I4. A row moves to another pack (GC) only in the transaction that
 *       deletes the old pack's row, after the new copy is fdatasynced; the
 *       old file is unlinked after that commit (see gc.c).
 *   I5. The tail only moves forward past bytes that are written, so a
 *       queued row's bytes are never overwritten.
 * If fdatasync fails, the page cache and the disk may differ (the kernel
 * may have dropped the dirty pages), so the writer turns sticky: every later
 * put fails with -EIO until the store is reopened and recovery re-reads what
 * is really on disk. -ENOSPC from a write is not sticky: that batch fails,
 * its bytes are overwritten by the next append, and the store goes on; a
 * commit that fails for lack of space requeues its rows for the next flush.
 *
 * Reads take one of STORE_READERS connections (WAL readers never block the
 * writer), look rows up, then pread records through cached read-only fds
 * with no lock held. A chunk added but not committed yet is found in the
 * queued rows (pending, or taken by a running flush: `syncing`), under
 * write_lock; one that left the queue meanwhile was committed first, so a
 * second index lookup finds it. Every read re-hashes the decoded bytes
 * (-EBADMSG on a mismatch): the index and framing are trusted for nothing.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "store/store_priv.h"
#include "util/util.h"

/* ---- crash-test hook ---------------------------------------------------- */

static atomic_long crash_after;

void store_set_crash_after(long n)
{
	atomic_store(&crash_after, n);
}

void store_crash_point(int fd, const struct iovec *iov, int cnt, uint64_t off)
{
	if (atomic_load_explicit(&crash_after, memory_order_relaxed) <= 0)
		return;
	if (atomic_fetch_sub(&crash_after, 1) != 1)
		return;
	if (fd >= 0 && cnt > 0) {
		/* Leave a torn write behind: half of the first record. */
		size_t half = iov[0].iov_len / 2;
		if (pwrite(fd, iov[0].iov_base, half, (off_t)off) < 0)
			abort();
	}
	raise(SIGKILL);
}

/* ---- helpers ------------------------------------------------------------ */

static void hex_id(const ds_chunk_id *id, char out[DS_CHUNK_ID_HEX])
{
	ds_chunk_id_to_hex(id, out);
}

uint32_t store_scratch_size(const struct ds_store *s)
{
	return REC_HEADER_SIZE + chunk_compress_bound(s->chunk_size);
}

int store_pack_fd(struct ds_store *s, uint32_t pack)
{
	int fd, r = 0;

	pthread_mutex_lock(&s->fd_lock);
	if (pack >= s->nfds) {
		uint32_t n = MAX(pack + 1, s->nfds * 2);
		int *fds = realloc(s->fds, n * sizeof(*fds));
		if (!fds) {
			r = -ENOMEM;
			goto out;
		}
		for (uint32_t i = s->nfds; i < n; i++)
			fds[i] = -1;
		s->fds = fds;
		s->nfds = n;
	}
	if (s->fds[pack] < 0) {
		char name[PACK_NAME_MAX];
		pack_name(pack, name);
		fd = openat(s->packs_fd, name, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			r = -errno;
			log_error("store: cannot open pack %s: %s", name, strerror(errno));
			goto out;
		}
		s->fds[pack] = fd;
	}
	r = s->fds[pack];
out:
	pthread_mutex_unlock(&s->fd_lock);
	return r;
}

void store_pack_fd_drop(struct ds_store *s, uint32_t pack)
{
	pthread_mutex_lock(&s->fd_lock);
	if (pack < s->nfds && s->fds[pack] >= 0) {
		close(s->fds[pack]);
		s->fds[pack] = -1;
	}
	pthread_mutex_unlock(&s->fd_lock);
}

int store_read_record(struct ds_store *s, const ds_chunk_id *id, const struct chunk_loc *loc,
		      uint8_t *scratch, void *out)
{
	char hex[DS_CHUNK_ID_HEX];
	struct rec_header h;
	ds_chunk_id got;
	const char *what;
	int fd, r;

	if (loc->len <= REC_HEADER_SIZE || loc->len > store_scratch_size(s) ||
	    loc->raw_len == 0 || loc->raw_len > s->chunk_size) {
		what = "index row has impossible lengths";
		r = -EBADMSG;
		goto bad;
	}
	/* Checked before store_pack_fd() sizes its fd table by the id. */
	if (loc->pack == 0 || loc->pack > atomic_load(&s->max_pack)) {
		what = "index row names a pack that was never made";
		r = -EBADMSG;
		goto bad;
	}
	fd = store_pack_fd(s, loc->pack);
	if (fd < 0) {
		what = "pack cannot be opened";
		r = fd == -ENOENT ? -EIO : fd;
		goto bad;
	}
	r = pread_full(fd, scratch, loc->len, loc->off);
	if (r < 0) {
		what = r == -ENODATA ? "record lies past the pack's end" : "read failed";
		goto bad;
	}
	r = -EBADMSG;
	what = "record frame is damaged";
	if (rec_parse(scratch, &h) < 0 || h.stored_len != loc->len - REC_HEADER_SIZE ||
	    h.raw_len != loc->raw_len)
		goto bad;
	what = "record belongs to another chunk";
	if (memcmp(&h.id, id, sizeof(*id)) != 0)
		goto bad;
	what = "record checksum mismatch";
	if (rec_check(&h, scratch, scratch + REC_HEADER_SIZE) < 0)
		goto bad;
	if (!out)
		return 0;
	what = "payload does not decode";
	r = chunk_decompress(h.codec, scratch + REC_HEADER_SIZE, h.stored_len, out, h.raw_len);
	if (r < 0)
		goto bad;
	chunk_hash(s->secret, out, h.raw_len, &got);
	what = "content does not hash to the chunk id";
	r = -EBADMSG;
	if (memcmp(&got, id, sizeof(got)) != 0)
		goto bad;
	return 0;
bad:
	hex_id(id, hex);
	log_error("store: chunk %s (pack %08x offset %llu): %s", hex, loc->pack,
		  (unsigned long long)loc->off, what);
	return r;
}

/* ---- create / open / close ---------------------------------------------- */

static int path_join(char *buf, size_t size, const char *dir, const char *name)
{
	int n = snprintf(buf, size, "%s/%s", dir, name);

	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static bool valid_chunk_size(uint32_t cs)
{
	return cs >= DS_CHUNK_SIZE_MIN && cs <= DS_CHUNK_SIZE_MAX && (cs & (cs - 1)) == 0;
}

int ds_store_create(const char *dir, const struct ds_store_options *opt)
{
	struct index_meta m = {0};
	char path[4096];
	sqlite3 *db = NULL;
	int r;

	m.chunk_size = opt && opt->chunk_size ? opt->chunk_size : DS_CHUNK_SIZE_DEFAULT;
	m.pack_size = opt && opt->pack_size ? opt->pack_size : STORE_PACK_SIZE_DEFAULT;
	if (!valid_chunk_size(m.chunk_size) || m.pack_size < (1u << 20))
		return -EINVAL;
	if (mkdir(dir, 0750) < 0 && errno != EEXIST)
		return -errno;
	r = path_join(path, sizeof(path), dir, "store.db");
	if (r < 0)
		return r;
	if (access(path, F_OK) == 0)
		return -EEXIST;
	r = path_join(path, sizeof(path), dir, "packs");
	if (r < 0)
		return r;
	if (mkdir(path, 0750) < 0 && errno != EEXIST)
		return -errno;
	r = random_bytes(m.secret, sizeof(m.secret));
	if (r == 0)
		r = random_bytes(m.store_id, sizeof(m.store_id));
	if (r < 0)
		return r;

	/* The index is built under a temporary name and renamed into place,
	 * so a crash during creation leaves no half-made store. */
	r = path_join(path, sizeof(path), dir, "store.db.new");
	if (r < 0)
		return r;
	unlink(path);
	r = index_open(path, INDEX_CREATE, &db);
	if (r == 0)
		r = index_init(db, &m);
	if (r == 0)
		r = index_exec(db, "PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;");
	sqlite3_close(db);
	if (r == 0) {
		char final[4096];
		r = path_join(final, sizeof(final), dir, "store.db");
		if (r == 0 && rename(path, final) < 0)
			r = -errno;
		if (r == 0)
			r = fsync_dir(dir);
	}
	if (r < 0)
		unlink(path);
	explicit_bzero(m.secret, sizeof(m.secret));
	return r;
}

/*
 * Recovery (I2, I3): cut pack tails past their committed length, drop pack
 * files that no row names, and find the pack to append to.
 */
static int store_recover(struct ds_store *s)
{
	sqlite3_stmt *st;
	DIR *d;
	struct dirent *de;
	int r, rc, dupfd;

	r = index_prepare(s->wdb, "SELECT id, committed FROM packs ORDER BY id", &st);
	if (r < 0)
		return r;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		uint32_t id = (uint32_t)sqlite3_column_int64(st, 0);
		uint64_t committed = (uint64_t)sqlite3_column_int64(st, 1);
		char name[PACK_NAME_MAX];
		uint8_t hdr[PACK_HEADER_SIZE];
		struct stat sb;
		_cleanup_close_ int fd = -1;

		pack_name(id, name);
		s->max_pack = MAX(s->max_pack, id);
		fd = openat(s->packs_fd, name, O_RDWR | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &sb) < 0) {
			log_error("store: pack %s named by the index is missing: %s", name,
				  strerror(errno));
			continue;
		}
		if (pread_full(fd, hdr, sizeof(hdr), 0) < 0 ||
		    pack_header_check(hdr, id, s->store_id) < 0)
			log_error("store: pack %s has a damaged header", name);
		if ((uint64_t)sb.st_size > committed) {
			log_info("store: pack %s: cutting %llu uncommitted bytes", name,
				 (unsigned long long)((uint64_t)sb.st_size - committed));
			if (ftruncate(fd, (off_t)committed) < 0 || fdatasync(fd) < 0) {
				r = -errno;
				break;
			}
		} else if ((uint64_t)sb.st_size < committed) {
			log_error("store: pack %s is %llu bytes shorter than committed", name,
				  (unsigned long long)(committed - (uint64_t)sb.st_size));
		}
		/* The last pack (highest id) is the one appended to. */
		if (s->cur_fd >= 0)
			close(s->cur_fd);
		s->cur_fd = TAKE_FD(fd);
		s->cur_pack = id;
		s->cur_len = committed;
	}
	sqlite3_finalize(st);
	if (r < 0)
		return r;
	if (rc != SQLITE_DONE)
		return index_errno(rc);

	dupfd = dup(s->packs_fd);
	if (dupfd < 0)
		return -errno;
	d = fdopendir(dupfd);
	if (!d) {
		close(dupfd);
		return -errno;
	}
	r = index_prepare(s->wdb, "SELECT 1 FROM packs WHERE id = ?1", &st);
	while (r == 0 && (de = readdir(d))) {
		uint32_t id;
		if (pack_name_parse(de->d_name, &id) < 0)
			continue;
		sqlite3_bind_int64(st, 1, id);
		rc = sqlite3_step(st);
		sqlite3_reset(st);
		if (rc == SQLITE_DONE) {
			log_info("store: removing pack %s that no index row names", de->d_name);
			if (unlinkat(s->packs_fd, de->d_name, 0) < 0)
				r = -errno;
			s->max_pack = MAX(s->max_pack, id);
		} else if (rc != SQLITE_ROW) {
			r = index_errno(rc);
		}
	}
	sqlite3_finalize(st);
	closedir(d);
	if (r == 0)
		r = fsync(s->packs_fd) < 0 ? -errno : 0;
	return r;
}

static int store_prepare_writer(struct ds_store *s)
{
	/* A row can be queued twice only if a failed commit requeued it:
	 * then both copies name the same bytes, so OR IGNORE is right. */
	int r = index_prepare(s->wdb,
			      "INSERT OR IGNORE INTO chunks(id, pack, off, len, raw_len) "
			      "VALUES(?1, ?2, ?3, ?4, ?5)",
			      &s->w_insert);
	if (r == 0)
		r = index_prepare(s->wdb,
				  "INSERT INTO packs(id, committed) VALUES(?1, ?2) "
				  "ON CONFLICT(id) DO UPDATE SET committed = excluded.committed",
				  &s->w_set_committed);
	return r;
}

int ds_store_open(const char *dir, struct ds_store **out)
{
	struct ds_store *s;
	struct index_meta m;
	char path[4096];
	int r;

	r = path_join(path, sizeof(path), dir, "store.db");
	if (r < 0)
		return r;
	if (access(path, F_OK) < 0)
		return -errno;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dirfd = s->packs_fd = s->lock_fd = s->cur_fd = -1;
	pthread_rwlock_init(&s->gc_lock, NULL);
	pthread_mutex_init(&s->write_lock, NULL);
	pthread_mutex_init(&s->commit_lock, NULL);
	pthread_mutex_init(&s->pool_lock, NULL);
	pthread_mutex_init(&s->fd_lock, NULL);
	for (int i = 0; i < STORE_READERS; i++)
		pthread_mutex_init(&s->readers[i].lock, NULL);

	s->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->dirfd < 0) {
		r = -errno;
		goto err;
	}
	s->lock_fd = openat(s->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (s->lock_fd < 0) {
		r = -errno;
		goto err;
	}
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		if (r == -EBUSY)
			log_error("store: %s is open in another process", dir);
		goto err;
	}
	s->packs_fd = openat(s->dirfd, "packs", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->packs_fd < 0) {
		r = -errno == -ENOENT ? -EBADMSG : -errno;
		goto err;
	}
	r = index_open(path, 0, &s->wdb);
	if (r < 0)
		goto err;
	r = index_read_meta(s->wdb, &m);
	if (r < 0) {
		log_error("store: %s is not a usable dsnap index (%s)", path, strerror(-r));
		goto err;
	}
	s->chunk_size = m.chunk_size;
	s->pack_size = m.pack_size;
	memcpy(s->secret, m.secret, sizeof(s->secret));
	memcpy(s->store_id, m.store_id, sizeof(s->store_id));
	explicit_bzero(m.secret, sizeof(m.secret));

	r = store_recover(s);
	if (r < 0)
		goto err;
	r = store_prepare_writer(s);
	if (r < 0)
		goto err;
	for (int i = 0; i < STORE_READERS; i++) {
		struct store_reader *rd = &s->readers[i];
		r = index_open(path, 0, &rd->db);
		if (r == 0)
			r = index_prepare(rd->db,
					  "SELECT pack, off, len, raw_len FROM chunks WHERE id = ?1",
					  &rd->lookup);
		if (r < 0)
			goto err;
	}
	*out = s;
	return 0;
err:
	ds_store_close(s);
	return r;
}

void ds_store_close(struct ds_store *s)
{
	if (!s)
		return;
	/* Rows added without a flush are committed now, when possible. */
	if (s->wdb && s->w_insert && (s->pending.n > 0 || s->ndirty > 0) && !s->sticky)
		store_flush_locked(s);
	for (size_t i = 0; i < s->ndirty; i++)
		if (s->dirty[i].fd != s->cur_fd)
			close(s->dirty[i].fd);
	free(s->dirty);
	free(s->pending.v);
	idset_free(&s->pending_ids);
	idset_free(&s->syncing_ids);
	for (unsigned i = 0; i < s->npool; i++)
		free(s->pool[i].buf);
	for (int i = 0; i < STORE_READERS; i++) {
		sqlite3_finalize(s->readers[i].lookup);
		sqlite3_close(s->readers[i].db);
		pthread_mutex_destroy(&s->readers[i].lock);
	}
	sqlite3_finalize(s->w_insert);
	sqlite3_finalize(s->w_set_committed);
	sqlite3_close(s->wdb);
	for (uint32_t i = 0; i < s->nfds; i++)
		if (s->fds[i] >= 0)
			close(s->fds[i]);
	free(s->fds);
	if (s->cur_fd >= 0)
		close(s->cur_fd);
	if (s->packs_fd >= 0)
		close(s->packs_fd);
	if (s->lock_fd >= 0)
		close(s->lock_fd); /* drops the flock */
	if (s->dirfd >= 0)
		close(s->dirfd);
	pthread_rwlock_destroy(&s->gc_lock);
	pthread_mutex_destroy(&s->write_lock);
	pthread_mutex_destroy(&s->commit_lock);
	pthread_mutex_destroy(&s->pool_lock);
	pthread_mutex_destroy(&s->fd_lock);
	explicit_bzero(s->secret, sizeof(s->secret));
	free(s);
}

uint32_t ds_store_chunk_size(const struct ds_store *s)
{
	return s->chunk_size;
}

void ds_store_chunk_id(const struct ds_store *s, const void *data, size_t len, ds_chunk_id *id)
{
	if (ds_is_zero(data, len))
		memset(id, 0, sizeof(*id));
	else
		chunk_hash(s->secret, data, len, id);
}

/* ---- the writer ----------------------------------------------------------- */

/* An add past this much flushes itself. Each flush is 3 or more device
 * cache flushes (the packs, packs/, the index's WAL); a copy at 50 MB/s
 * flushing every 256 MiB cost the disk's users a second of half their IOPS
 * every 5 s (bench/RESULTS.md). The rows waiting meanwhile take about 64
 * bytes per chunk. */
#define FLUSH_PENDING_BYTES (1ull << 30)

static int dirty_note(struct ds_store *s, uint32_t pack, int fd, uint64_t tail)
{
	for (size_t i = 0; i < s->ndirty; i++) {
		if (s->dirty[i].id == pack) {
			s->dirty[i].tail = tail;
			return 0;
		}
	}
	if (s->ndirty == s->dirty_cap) {
		size_t cap = s->dirty_cap ? s->dirty_cap * 2 : 4;
		struct dirty_pack *v = realloc(s->dirty, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		s->dirty = v;
		s->dirty_cap = cap;
	}
	s->dirty[s->ndirty++] = (struct dirty_pack){pack, fd, tail};
	return 0;
}

/*
 * Makes sure there is a pack with room to append to; rotates to a new one
 * when the current one has passed pack_size or when force is set. The new
 * pack's file, header and folder entry are durable before any row naming
 * it can commit (I3); its packs row is created by its first commit. A
 * rotated pack stays open in the dirty list until a flush commits it.
 * Caller holds write_lock (or every lock, for GC).
 */
int store_writer_pack(struct ds_store *s, bool force)
{
	uint8_t hdr[PACK_HEADER_SIZE];
	char name[PACK_NAME_MAX];
	bool old_dirty = false;
	uint32_t id;
	int fd, r;

	if (s->cur_fd >= 0 && s->cur_len < s->pack_size && !force)
		return 0;
	if (atomic_load(&s->max_pack) == UINT32_MAX)
		return -ENOSPC;
	id = atomic_load(&s->max_pack) + 1;
	pack_name(id, name);
	fd = openat(s->packs_fd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	pack_header_fill(hdr, id, s->store_id);
	r = pwrite_full(fd, hdr, sizeof(hdr), 0);
	/* Not synced here: every fdatasync is a cache flush of the device,
	 * which the disk's users feel (a second of lower IOPS each, under
	 * load). The flush that commits the pack's first row syncs it. */
	if (r == 0)
		r = dirty_note(s, id, fd, PACK_HEADER_SIZE);
	if (r < 0) {
		close(fd);
		unlinkat(s->packs_fd, name, 0);
		return r;
	}
	s->max_pack = id;
	s->dir_dirty = true;
	for (size_t i = 0; i < s->ndirty; i++)
		old_dirty |= s->dirty[i].id == s->cur_pack;
	/* The old pack's fd is closed here unless a flush still needs it. */
	if (s->cur_fd >= 0 && !old_dirty)
		close(s->cur_fd);
	s->cur_fd = fd;
	s->cur_pack = id;
	s->cur_len = PACK_HEADER_SIZE;
	return 0;
}

struct staged {
	uint32_t off; /* of the record in the staging buffer */
	uint32_t len; /* record length; 0 for an all-zero chunk */
};

static uint8_t *pool_get(struct ds_store *s, size_t need)
{
	uint8_t *buf = NULL;

	pthread_mutex_lock(&s->pool_lock);
	for (unsigned i = 0; i < s->npool; i++) {
		if (s->pool[i].cap >= need) {
			buf = s->pool[i].buf;
			s->pool[i] = s->pool[--s->npool];
			break;
		}
	}
	pthread_mutex_unlock(&s->pool_lock);
	return buf ? buf : malloc(need);
}

static void pool_put(struct ds_store *s, uint8_t *buf, size_t cap)
{
	pthread_mutex_lock(&s->pool_lock);
	if (buf && s->npool < ARRAY_SIZE(s->pool)) {
		s->pool[s->npool].buf = buf;
		s->pool[s->npool++].cap = cap;
		buf = NULL;
	}
	pthread_mutex_unlock(&s->pool_lock);
	free(buf);
}

/* Step 1 of the protocol: hash, detect zeros, compress, frame. */
static int stage_batch(struct ds_store *s, struct ds_chunk *chunks, size_t n,
		       struct staged *st, uint8_t **bufp, size_t *capp)
{
	uint64_t total = 0;
	uint8_t *buf;
	uint32_t pos = 0;

	for (size_t i = 0; i < n; i++) {
		if (!chunks[i].data || chunks[i].len == 0 || chunks[i].len > s->chunk_size)
			return -EINVAL;
		total += REC_HEADER_SIZE + chunk_compress_bound(chunks[i].len);
	}
	if (total > UINT32_MAX)
		return -E2BIG;
	buf = pool_get(s, total);
	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct ds_chunk *c = &chunks[i];
		uint8_t *rec = buf + pos;
		uint8_t codec;
		uint32_t slen;

		c->stored = false;
		c->stored_len = 0;
		c->err = 0;
		if (ds_is_zero(c->data, c->len)) {
			memset(&c->id, 0, sizeof(c->id));
			st[i].len = 0;
			continue;
		}
		chunk_hash(s->secret, c->data, c->len, &c->id);
		slen = chunk_compress(c->data, c->len, rec + REC_HEADER_SIZE, &codec);
		rec_seal(rec, codec, c->len, slen, &c->id);
		st[i].off = pos;
		st[i].len = REC_HEADER_SIZE + slen;
		pos += st[i].len;
	}
	*bufp = buf;
	*capp = total;
	return 0;
}

static struct store_reader *reader_get(struct ds_store *s);
static void reader_put(struct store_reader *rd);

static int pend_push(struct pend_vec *pv, const struct pend *p)
{
	if (pv->n == pv->cap) {
		size_t cap = pv->cap ? pv->cap * 2 : 256;
		struct pend *v = realloc(pv->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		pv->v = v;
		pv->cap = cap;
	}
	pv->v[pv->n++] = *p;
	return 0;
}

/*
 * Step 2: under write_lock, skip chunks already in the store (committed,
 * pending or being flushed), append the rest at the tail of the current
 * pack, and queue their rows. *seq is the batch's number for the flush.
 */
static int append_batch(struct ds_store *s, struct ds_chunk *chunks, size_t n,
			const struct staged *st, uint8_t *buf, struct iovec *iov, uint64_t *seq)
{
	struct idset batch = {0};
	struct store_reader *rd;
	struct chunk_loc loc;
	uint64_t tail;
	int cnt = 0, r;

	r = s->sticky;
	if (r < 0)
		return r;
	tail = 0;
	rd = reader_get(s);
	for (size_t i = 0; i < n && r == 0; i++) {
		const ds_chunk_id *id = &chunks[i].id;
		if (st[i].len == 0 || idset_has(&batch, id) || idset_has(&s->pending_ids, id) ||
		    idset_has(&s->syncing_ids, id))
			continue;
		r = index_lookup(rd->lookup, id, &loc);
		if (r == 0)
			continue;
		if (r != -ENOENT)
			break;
		r = idset_add(&batch, id);
		chunks[i].stored = true;
		chunks[i].stored_len = st[i].len;
		iov[cnt].iov_base = buf + st[i].off;
		iov[cnt].iov_len = st[i].len;
		cnt++;
		tail += st[i].len;
	}
	reader_put(rd);
	/* A pack is made only when there is something to put in it. */
	if (r == 0 && cnt > 0)
		r = store_writer_pack(s, false);
	tail += s->cur_len;
	if (r == 0 && cnt > 0) {
		store_crash_point(s->cur_fd, iov, cnt, s->cur_len);
		r = pwritev_full(s->cur_fd, iov, cnt, s->cur_len);
	}
	if (r < 0) {
		/* Nothing queued. A partial write past the tail would be
		 * overwritten by the next append anyway; cut it now. */
		if (cnt > 0 && s->cur_fd >= 0 && ftruncate(s->cur_fd, (off_t)s->cur_len) < 0)
			log_warn("store: cannot cut pack %08x back: %s", s->cur_pack,
				 strerror(errno));
		idset_free(&batch);
		return r;
	}
	/* The bytes are written: from here the tail moves past them whatever
	 * happens, since queued rows may point at them. */
	for (size_t i = 0, off = s->cur_len; i < n && r == 0; i++) {
		struct pend p;
		if (!chunks[i].stored)
			continue;
		p = (struct pend){chunks[i].id, off, s->cur_pack, chunks[i].stored_len, chunks[i].len};
		r = pend_push(&s->pending, &p);
		if (r == 0)
			r = idset_add(&s->pending_ids, &p.id);
		off += p.len;
	}
	if (cnt > 0 && dirty_note(s, s->cur_pack, s->cur_fd, tail) < 0)
		s->sticky = -ENOMEM; /* cannot remember what to flush */
	/* Start writeback now, so the flush's fdatasync finds little left to
	 * wait for; this only queues I/O. */
	if (cnt > 0)
		sync_file_range(s->cur_fd, (off_t)s->cur_len, (off_t)(tail - s->cur_len),
				SYNC_FILE_RANGE_WRITE);
	s->pending_bytes += tail - s->cur_len;
	s->cur_len = tail;
	if (r == 0)
		*seq = ++s->append_seq;
	idset_free(&batch);
	return r;
}

/* fsyncs packs/ when a pack was created since it last was (I3). 0, or
 * -errno and the writer turns sticky. Caller holds commit_lock. */
static int store_dir_sync(struct ds_store *s)
{
	bool dirty;
	int r = 0;

	pthread_mutex_lock(&s->write_lock);
	dirty = s->dir_dirty;
	s->dir_dirty = false;
	pthread_mutex_unlock(&s->write_lock);
	if (!dirty)
		return 0;
	store_crash_point(-1, NULL, 0, 0);
	if (fsync(s->packs_fd) < 0) {
		r = -errno;
		log_error("store: fsync of the packs folder failed: %s; "
			  "the store refuses writes until reopened", strerror(errno));
		pthread_mutex_lock(&s->write_lock);
		s->dir_dirty = true;
		s->sticky = -EIO;
		pthread_mutex_unlock(&s->write_lock);
	}
	return r;
}

int store_writer_commit(struct ds_store *s, uint64_t new_len)
{
	int r;

	sqlite3_bind_int64(s->w_set_committed, 1, s->cur_pack);
	sqlite3_bind_int64(s->w_set_committed, 2, (int64_t)new_len);
	r = index_errno(sqlite3_step(s->w_set_committed));
	sqlite3_reset(s->w_set_committed);
	if (r == 0) {
		store_crash_point(-1, NULL, 0, 0);
		r = index_exec(s->wdb, "COMMIT");
	}
	return r;
}

static int commit_rows(struct ds_store *s, const struct pend_vec *rows,
		       const struct dirty_pack *packs, size_t npacks)
{
	int r = index_exec(s->wdb, "BEGIN IMMEDIATE");

	for (size_t i = 0; r == 0 && i < npacks; i++) {
		sqlite3_bind_int64(s->w_set_committed, 1, packs[i].id);
		sqlite3_bind_int64(s->w_set_committed, 2, (int64_t)packs[i].tail);
		r = index_errno(sqlite3_step(s->w_set_committed));
		sqlite3_reset(s->w_set_committed);
	}
	for (size_t i = 0; r == 0 && i < rows->n; i++) {
		const struct pend *p = &rows->v[i];
		sqlite3_stmt *st = s->w_insert;
		sqlite3_bind_blob(st, 1, p->id.b, DS_CHUNK_ID_SIZE, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, p->pack);
		sqlite3_bind_int64(st, 3, (int64_t)p->off);
		sqlite3_bind_int64(st, 4, p->len);
		sqlite3_bind_int64(st, 5, p->raw_len);
		r = index_errno(sqlite3_step(st));
		sqlite3_reset(st);
	}
	if (r == 0) {
		store_crash_point(-1, NULL, 0, 0);
		r = index_exec(s->wdb, "COMMIT");
	}
	if (r < 0 && !sqlite3_get_autocommit(s->wdb))
		index_exec(s->wdb, "ROLLBACK");
	return r;
}

/*
 * The flush (steps 3 and 4): take every queued row and the tails of the
 * packs they are in, fdatasync those packs, then commit rows and tails in
 * one transaction (I1). Appends go on meanwhile past the taken tails. On a
 * failed commit the rows are queued again for the next flush.
 */
int store_flush_locked(struct ds_store *s)
{
	struct pend_vec rows = {0};
	struct dirty_pack *packs = NULL;
	size_t npacks = 0;
	uint64_t seq;
	int r = 0;

	pthread_mutex_lock(&s->write_lock);
	seq = s->append_seq;
	r = s->sticky;
	if (r == 0 && s->ndirty > 0) {
		packs = malloc(s->ndirty * sizeof(*packs));
		if (!packs)
			r = -ENOMEM;
	}
	if (r == 0) {
		rows = s->pending;
		memset(&s->pending, 0, sizeof(s->pending));
		idset_free(&s->syncing_ids);
		s->syncing_ids = s->pending_ids;
		s->syncing = &rows;
		memset(&s->pending_ids, 0, sizeof(s->pending_ids));
		npacks = s->ndirty;
		if (npacks)
			memcpy(packs, s->dirty, npacks * sizeof(*packs));
		s->pending_bytes = 0;
	}
	pthread_mutex_unlock(&s->write_lock);
	if (r < 0)
		return r;

	for (size_t i = 0; i < npacks && r == 0; i++) {
		store_crash_point(-1, NULL, 0, 0);
		if (fdatasync(packs[i].fd) < 0) {
			r = -errno;
			log_error("store: fdatasync of pack %08x failed: %s; "
				  "the store refuses writes until reopened",
				  packs[i].id, strerror(errno));
		}
	}
	/* The packs taken were created before the flag was cleared: their
	 * folder entries are durable before any row names them (I3). */
	if (r == 0 && npacks > 0)
		r = store_dir_sync(s);
	if (r == 0 && (npacks > 0 || rows.n > 0))
		r = commit_rows(s, &rows, packs, npacks);

	pthread_mutex_lock(&s->write_lock);
	if (r == -EIO || r == -EBADMSG) {
		s->sticky = -EIO;
	} else if (r < 0) {
		for (size_t i = 0; i < rows.n; i++)
			if (pend_push(&s->pending, &rows.v[i]) < 0 ||
			    idset_add(&s->pending_ids, &rows.v[i].id) < 0)
				s->sticky = -ENOMEM;
	} else {
		/* Committed: rotated packs are done with; forget their tails. */
		for (size_t i = 0; i < npacks; i++) {
			for (size_t k = 0; k < s->ndirty; k++) {
				struct dirty_pack *d = &s->dirty[k];
				if (d->id != packs[i].id || d->tail != packs[i].tail)
					continue;
				if (d->id != s->cur_pack)
					close(d->fd);
				s->dirty[k] = s->dirty[--s->ndirty];
				break;
			}
		}
		atomic_store(&s->durable_seq, seq);
	}
	idset_clear(&s->syncing_ids);
	s->syncing = NULL;
	pthread_mutex_unlock(&s->write_lock);
	free(rows.v);
	free(packs);
	return r;
}

/* Adds a batch; *seq is its number, or 0 when there was nothing to append. */
static int store_add(struct ds_store *s, struct ds_chunk *chunks, size_t n, uint64_t *seq)
{
	_cleanup_free_ struct staged *st = NULL;
	_cleanup_free_ struct iovec *iov = NULL;
	uint8_t *buf = NULL;
	size_t cap = 0;
	bool flush = false;
	int r;

	*seq = 0;
	if (n == 0)
		return 0;
	if (n > INT32_MAX)
		return -E2BIG;
	st = calloc(n, sizeof(*st));
	iov = calloc(n, sizeof(*iov));
	if (!st || !iov)
		return -ENOMEM;
	r = stage_batch(s, chunks, n, st, &buf, &cap);
	if (r < 0)
		return r;
	pthread_rwlock_rdlock(&s->gc_lock);
	pthread_mutex_lock(&s->write_lock);
	r = append_batch(s, chunks, n, st, buf, iov, seq);
	flush = r == 0 && s->pending_bytes >= FLUSH_PENDING_BYTES;
	pthread_mutex_unlock(&s->write_lock);
	if (flush) {
		pthread_mutex_lock(&s->commit_lock);
		r = store_flush_locked(s);
		pthread_mutex_unlock(&s->commit_lock);
	}
	pthread_rwlock_unlock(&s->gc_lock);
	pool_put(s, buf, cap);
	if (r < 0)
		for (size_t i = 0; i < n; i++) {
			chunks[i].stored = false;
			chunks[i].stored_len = 0;
		}
	return r;
}

int ds_store_add(struct ds_store *s, struct ds_chunk *chunks, size_t n)
{
	uint64_t seq;

	return store_add(s, chunks, n, &seq);
}

int ds_store_flush(struct ds_store *s)
{
	int r;

	pthread_rwlock_rdlock(&s->gc_lock);
	pthread_mutex_lock(&s->commit_lock);
	r = store_flush_locked(s);
	pthread_mutex_unlock(&s->commit_lock);
	pthread_rwlock_unlock(&s->gc_lock);
	return r;
}

int ds_store_put(struct ds_store *s, struct ds_chunk *chunks, size_t n)
{
	uint64_t seq;
	int r = store_add(s, chunks, n, &seq);

	if (r < 0 || seq == 0)
		return r;
	/* Group commit: whoever gets commit_lock first flushes every batch
	 * appended so far; the others find theirs durable already. */
	pthread_rwlock_rdlock(&s->gc_lock);
	pthread_mutex_lock(&s->commit_lock);
	if (atomic_load(&s->durable_seq) < seq)
		r = store_flush_locked(s);
	pthread_mutex_unlock(&s->commit_lock);
	pthread_rwlock_unlock(&s->gc_lock);
	if (atomic_load(&s->durable_seq) >= seq)
		return 0;
	for (size_t i = 0; i < n; i++) {
		chunks[i].stored = false;
		chunks[i].stored_len = 0;
	}
	return r < 0 ? r : -EIO;
}

/* ---- readers -------------------------------------------------------------- */

static struct store_reader *reader_get(struct ds_store *s)
{
	unsigned i = atomic_fetch_add(&s->next_reader, 1);

	for (unsigned k = 0; k < STORE_READERS; k++) {
		struct store_reader *rd = &s->readers[(i + k) % STORE_READERS];
		if (pthread_mutex_trylock(&rd->lock) == 0)
			return rd;
	}
	pthread_mutex_lock(&s->readers[i % STORE_READERS].lock);
	return &s->readers[i % STORE_READERS];
}

static void reader_put(struct store_reader *rd)
{
	pthread_mutex_unlock(&rd->lock);
}

/* The row of a chunk added but not committed yet: queued, or taken by a
 * running flush. Its bytes are in its pack already (appended before the
 * row was queued), so it reads like any other. Newest rows first: readers
 * of a snapshot being copied read what the copier stored last. */
static int queued_lookup(struct ds_store *s, const ds_chunk_id *id, struct chunk_loc *loc)
{
	const struct pend_vec *vs[2];
	int r = -ENOENT;

	pthread_mutex_lock(&s->write_lock);
	vs[0] = idset_has(&s->pending_ids, id) ? &s->pending : NULL;
	vs[1] = idset_has(&s->syncing_ids, id) ? s->syncing : NULL;
	for (int k = 0; k < 2 && r < 0; k++) {
		for (size_t i = vs[k] ? vs[k]->n : 0; i-- > 0;) {
			const struct pend *p = &vs[k]->v[i];
			if (memcmp(p->id.b, id->b, DS_CHUNK_ID_SIZE) == 0) {
				*loc = (struct chunk_loc){p->pack, p->off, p->len, p->raw_len};
				r = 0;
				break;
			}
		}
	}
	pthread_mutex_unlock(&s->write_lock);
	return r;
}

int ds_store_get(struct ds_store *s, struct ds_chunk *chunks, size_t n)
{
	_cleanup_free_ struct chunk_loc *locs = NULL;
	_cleanup_free_ uint8_t *scratch = NULL;
	struct store_reader *rd;
	int first = 0;

	if (n == 0)
		return 0;
	locs = calloc(n, sizeof(*locs));
	scratch = malloc(store_scratch_size(s));
	if (!locs || !scratch)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (!chunks[i].data)
			return -EINVAL;

	pthread_rwlock_rdlock(&s->gc_lock);
	rd = reader_get(s);
	for (size_t i = 0; i < n; i++) {
		chunks[i].err = ds_chunk_id_is_zero(&chunks[i].id)
					? 0
					: index_lookup(rd->lookup, &chunks[i].id, &locs[i]);
	}
	reader_put(rd);
	/* Outside the reader: appends take write_lock, then a reader. */
	for (size_t i = 0; i < n; i++) {
		if (chunks[i].err != -ENOENT)
			continue;
		chunks[i].err = queued_lookup(s, &chunks[i].id, &locs[i]);
		/* Not queued any more: a flush committed it between the two
		 * looks (its rows leave the queue only after the commit). */
		if (chunks[i].err == -ENOENT) {
			rd = reader_get(s);
			chunks[i].err = index_lookup(rd->lookup, &chunks[i].id, &locs[i]);
			reader_put(rd);
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct ds_chunk *c = &chunks[i];
		if (c->err == 0 && ds_chunk_id_is_zero(&c->id)) {
			memset(c->data, 0, s->chunk_size);
			c->len = s->chunk_size;
		} else if (c->err == 0) {
			c->err = store_read_record(s, &c->id, &locs[i], scratch, c->data);
			c->len = c->err == 0 ? locs[i].raw_len : 0;
		}
		if (c->err < 0 && first == 0)
			first = c->err;
	}
	pthread_rwlock_unlock(&s->gc_lock);
	return first;
}

int ds_store_has(struct ds_store *s, const ds_chunk_id *ids, size_t n, bool *present)
{
	struct store_reader *rd;
	struct chunk_loc loc;
	int r = 0;

	pthread_rwlock_rdlock(&s->gc_lock);
	rd = reader_get(s);
	for (size_t i = 0; i < n && r == 0; i++) {
		if (ds_chunk_id_is_zero(&ids[i])) {
			present[i] = true;
			continue;
		}
		r = index_lookup(rd->lookup, &ids[i], &loc);
		present[i] = r == 0;
		if (r == -ENOENT)
			r = 0;
	}
	reader_put(rd);
	pthread_rwlock_unlock(&s->gc_lock);
	return r;
}

int ds_store_stats(struct ds_store *s, struct ds_store_stats *out)
{
	struct store_reader *rd;
	sqlite3_stmt *st = NULL;
	int r;

	memset(out, 0, sizeof(*out));
	pthread_rwlock_rdlock(&s->gc_lock);
	rd = reader_get(s);
	r = index_prepare(rd->db,
			  "SELECT (SELECT count(*) FROM chunks), (SELECT total(raw_len) FROM chunks),"
			  " (SELECT total(len) FROM chunks), (SELECT count(*) FROM packs),"
			  " (SELECT total(committed) FROM packs)",
			  &st);
	if (r == 0) {
		int rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			out->chunks = (uint64_t)sqlite3_column_int64(st, 0);
			out->raw_bytes = (uint64_t)sqlite3_column_double(st, 1);
			out->stored_bytes = (uint64_t)sqlite3_column_double(st, 2);
			out->packs = (uint64_t)sqlite3_column_int64(st, 3);
			out->pack_bytes = (uint64_t)sqlite3_column_double(st, 4);
		} else {
			r = index_errno(rc);
		}
	}
	sqlite3_finalize(st);
	reader_put(rd);
	pthread_rwlock_unlock(&s->gc_lock);
	return r;
}

int64_t ds_store_verify(struct ds_store *s, ds_store_bad_fn bad, void *opaque)
{
	_cleanup_free_ uint8_t *scratch = malloc(store_scratch_size(s));
	_cleanup_free_ uint8_t *out = malloc(s->chunk_size);
	struct store_reader *rd;
	sqlite3_stmt *st = NULL;
	int64_t nbad = 0;
	int r, rc;

	if (!scratch || !out)
		return -ENOMEM;
	pthread_rwlock_rdlock(&s->gc_lock);
	rd = reader_get(s);
	/* In pack order, so each pack is read front to back. */
	r = index_prepare(rd->db, "SELECT id, pack, off, len, raw_len FROM chunks "
				  "ORDER BY pack, off", &st);
	while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct chunk_loc loc;
		ds_chunk_id id = {0};
		int err;

		if (sqlite3_column_bytes(st, 0) == DS_CHUNK_ID_SIZE)
			memcpy(id.b, sqlite3_column_blob(st, 0), DS_CHUNK_ID_SIZE);
		loc.pack = (uint32_t)sqlite3_column_int64(st, 1);
		loc.off = (uint64_t)sqlite3_column_int64(st, 2);
		loc.len = (uint32_t)sqlite3_column_int64(st, 3);
		loc.raw_len = (uint32_t)sqlite3_column_int64(st, 4);
		err = store_read_record(s, &id, &loc, scratch, out);
		if (err < 0) {
			nbad++;
			if (bad)
				bad(&id, err, opaque);
		}
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = index_errno(rc);
	sqlite3_finalize(st);
	reader_put(rd);
	pthread_rwlock_unlock(&s->gc_lock);
	return r < 0 ? r : nbad;
}
