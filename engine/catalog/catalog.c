#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "catalog/catalog.h"
#include "store/index.h"
#include "util/util.h"

#define CATALOG_VERSION 1

/* Statements are prepared once and kept (reset after each use): preparing
 * cost more than running most of them, and a request runs several. They
 * are found by the address of their SQL text, a literal at each call. */
#define STMT_CACHE 40

struct catalog {
	sqlite3 *db;
	struct {
		const char *sql;
		sqlite3_stmt *st;
	} cache[STMT_CACHE];
	int wal_fd; /* the WAL, for catalog_sync */
	/* Checkpoints run on a connection of their own, outside the caller's
	 * lock (catalog_checkpoint), never inside a commit. */
	sqlite3 *ckpt_db;
	pthread_mutex_t ckpt_lock;
	/* Frames in the WAL after the last commit (wal_frames_hook). Not the
	 * file's size: a checkpointed WAL is written again from its start,
	 * never shrunk, so its size stays past the threshold and every copy's
	 * end checkpointed, and every checkpoint made the next commit sync
	 * the WAL's new header under the engine's lock. */
	atomic_int wal_frames;
};

static int wal_frames_hook(void *opaque, sqlite3 *db, const char *name, int frames)
{
	struct catalog *c = opaque;

	(void)db;
	(void)name;
	atomic_store(&c->wal_frames, frames);
	return SQLITE_OK;
}

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS disks("
	"  id TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, kind INTEGER NOT NULL,"
	"  key_dev INTEGER NOT NULL, key_ino INTEGER NOT NULL, key_id TEXT NOT NULL,"
	"  size INTEGER NOT NULL, fs_type TEXT NOT NULL, fs_uuid TEXT NOT NULL,"
	"  fs_label TEXT NOT NULL, status TEXT NOT NULL, owned INTEGER NOT NULL,"
	"  locked INTEGER NOT NULL, created INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS snapshots("
	"  id TEXT PRIMARY KEY, disk_id TEXT NOT NULL, name TEXT NOT NULL,"
	"  description TEXT NOT NULL, status TEXT NOT NULL, progress INTEGER NOT NULL,"
	"  disk_size INTEGER NOT NULL, created INTEGER NOT NULL, modified INTEGER NOT NULL,"
	"  retention_days INTEGER NOT NULL, automatic INTEGER NOT NULL, manifest BLOB,"
	"  bytes_read INTEGER NOT NULL, stored_bytes INTEGER NOT NULL, error TEXT NOT NULL,"
	"  category TEXT NOT NULL, instant_access INTEGER NOT NULL,"
	"  ia_retention_days INTEGER NOT NULL, resource_group TEXT NOT NULL,"
	"  seq INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS tags("
	"  snapshot_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, pos INTEGER NOT NULL,"
	"  PRIMARY KEY(snapshot_id, key)) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS tags_by_key ON tags(key, value);"
	"CREATE TABLE IF NOT EXISTS resource_groups("
	"  id TEXT PRIMARY KEY, name TEXT NOT NULL, created INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS client_tokens("
	"  caller INTEGER NOT NULL, token TEXT NOT NULL, action TEXT NOT NULL,"
	"  fingerprint TEXT NOT NULL, result TEXT NOT NULL, created INTEGER NOT NULL,"
	"  PRIMARY KEY(caller, token)) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS snapshots_by_disk ON snapshots(disk_id, seq);"
	"CREATE INDEX IF NOT EXISTS snapshots_by_seq ON snapshots(seq);"
	"INSERT OR IGNORE INTO meta(key, value) VALUES('format', 1);";

static int prep(struct catalog *c, const char *sql, sqlite3_stmt **out)
{
	int i, r;

	for (i = 0; i < STMT_CACHE && c->cache[i].sql; i++)
		if (c->cache[i].sql == sql) {
			*out = c->cache[i].st;
			return 0;
		}
	r = index_prepare(c->db, sql, out);
	if (r == 0 && i < STMT_CACHE) {
		c->cache[i].sql = sql;
		c->cache[i].st = *out;
	}
	return r;
}

/* Done with a statement from prep(): ready for its next use. */
static void unprep(struct catalog *c, sqlite3_stmt *st)
{
	for (int i = 0; i < STMT_CACHE && c->cache[i].sql; i++)
		if (c->cache[i].st == st) {
			sqlite3_reset(st);
			sqlite3_clear_bindings(st);
			return;
		}
	sqlite3_finalize(st);
}

int catalog_open(const char *path, struct catalog **out)
{
	struct catalog *c = calloc(1, sizeof(*c));
	sqlite3_stmt *st;
	int r;

	if (!c)
		return -ENOMEM;
	c->wal_fd = -1;
	pthread_mutex_init(&c->ckpt_lock, NULL);
	r = index_open(path, INDEX_CREATE | INDEX_PRIVATE, &c->db);
	/* Requests commit with synchronous=NORMAL (WAL): never corrupted, and
	 * no commit is lost when dsnapd dies, but the last ones may be lost to
	 * a power failure. The end of a copy is made durable by catalog_sync.
	 * No commit checkpoints (a checkpoint in a commit held every request
	 * for its copy and fsyncs): catalog_checkpoint does, on its own
	 * connection. */
	if (r == 0)
		r = index_exec(c->db, "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0");
	if (r == 0)
		sqlite3_wal_hook(c->db, wal_frames_hook, c);
	if (r == 0)
		r = index_exec(c->db, schema);
	if (r == 0)
		r = prep(c, "SELECT value FROM meta WHERE key = 'format'", &st);
	if (r == 0) {
		if (sqlite3_step(st) != SQLITE_ROW)
			r = -EBADMSG;
		else if (sqlite3_column_int64(st, 0) > CATALOG_VERSION)
			r = -EPROTONOSUPPORT;
		unprep(c, st);
	}
	if (r == 0) {
		/* The WAL exists from the schema's commit on and is kept while
		 * the connection is open (truncated, never removed). */
		char wal[DS_PATH_MAX + 8];
		snprintf(wal, sizeof(wal), "%s-wal", path);
		c->wal_fd = open(wal, O_RDONLY | O_CLOEXEC);
		if (c->wal_fd < 0)
			r = -errno;
	}
	if (r == 0)
		r = index_open(path, INDEX_PRIVATE, &c->ckpt_db);
	if (r < 0) {
		catalog_close(c);
		return r;
	}
	*out = c;
	return 0;
}

/*
 * Every commit made so far is durable when this returns 0. Frames in the
 * WAL are durable once the WAL is synced; frames a checkpoint already
 * copied were synced before it (synchronous=NORMAL syncs the WAL before
 * each checkpoint and the database after). Needs no lock: concurrent
 * calls share their fdatasyncs (group commit).
 */
int catalog_sync(struct catalog *c)
{
	return fdatasync(c->wal_fd) < 0 ? -errno : 0;
}

/* A WAL past this (4 MiB of 4 KiB pages) is copied into the database and
 * starts over. */
#define CKPT_WAL_FRAMES 1024

int catalog_checkpoint(struct catalog *c)
{
	int rc;

	if (atomic_load(&c->wal_frames) < CKPT_WAL_FRAMES ||
	    pthread_mutex_trylock(&c->ckpt_lock) != 0)
		return 0;
	/* PASSIVE: copies what no reader still needs, waits for no one;
	 * the writer restarts the WAL at its next commit once all is in. */
	rc = sqlite3_wal_checkpoint_v2(c->ckpt_db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	/* Until the next commit says how many frames the restarted WAL holds,
	 * nothing more to do (a commit since then has stored its own count,
	 * a few frames more than this at most). */
	if (rc == SQLITE_OK)
		atomic_store(&c->wal_frames, 0);
	pthread_mutex_unlock(&c->ckpt_lock);
	return rc == SQLITE_OK || rc == SQLITE_BUSY ? 0 : index_errno(rc);
}

void catalog_close(struct catalog *c)
{
	if (!c)
		return;
	for (int i = 0; i < STMT_CACHE; i++)
		sqlite3_finalize(c->cache[i].st);
	sqlite3_close(c->ckpt_db);
	sqlite3_close(c->db);
	pthread_mutex_destroy(&c->ckpt_lock);
	if (c->wal_fd >= 0)
		close(c->wal_fd);
	free(c);
}

void catalog_rollback(struct catalog *c)
{
	if (!sqlite3_get_autocommit(c->db))
		index_exec(c->db, "ROLLBACK");
}

/* A text column into dst, cut to size - 1 bytes (lists copy many). */
static void copy_text(char *dst, size_t size, sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);
	size_t n = t ? (size_t)sqlite3_column_bytes(st, col) : 0;

	if (n >= size)
		n = size - 1;
	if (n)
		memcpy(dst, t, n);
	dst[n] = '\0';
}

/* Runs a prepared statement to completion; 0 or -errno. */
static int step_done(struct catalog *c, sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	unprep(c, st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : index_errno(rc);
}

/* A statement without parameters, prepared once (sqlite3_exec would parse
 * BEGIN and COMMIT again on every change). */
static int exec_cached(struct catalog *c, const char *sql)
{
	sqlite3_stmt *st;
	int r = prep(c, sql, &st);

	if (r == 0 && (r = step_done(c, st)) < 0)
		log_error("catalog: %s: %s", sql, sqlite3_errmsg(c->db));
	return r;
}

int catalog_begin(struct catalog *c)
{
	return exec_cached(c, "BEGIN IMMEDIATE");
}

/* A commit that fails is rolled back: a transaction left open would take
 * every later change into it, and each later begin would fail. */
int catalog_commit(struct catalog *c)
{
	int r = exec_cached(c, "COMMIT");

	if (r < 0)
		catalog_rollback(c);
	return r;
}

/* ---- disks --------------------------------------------------------------- */

#define DISK_COLS                                                                          \
	"id, name, path, kind, key_dev, key_ino, key_id, size, fs_type, fs_uuid, fs_label, " \
	"status, owned, locked, created"

static void disk_bind(sqlite3_stmt *st, const struct disk_row *d)
{
	const struct ds_disk_info *i = &d->info;

	sqlite3_bind_text(st, 1, i->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, i->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, i->path, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 4, i->kind);
	sqlite3_bind_int64(st, 5, (int64_t)d->key.dev);
	sqlite3_bind_int64(st, 6, (int64_t)d->key.ino);
	sqlite3_bind_text(st, 7, d->key.id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 8, (int64_t)i->size);
	sqlite3_bind_text(st, 9, i->fs_type, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 10, i->fs_uuid, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 11, i->fs_label, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 12, i->status, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 13, i->owned);
	sqlite3_bind_int(st, 14, i->locked);
	sqlite3_bind_int64(st, 15, i->created);
}

static void disk_read(sqlite3_stmt *st, struct disk_row *d)
{
	struct ds_disk_info *i = &d->info;

	memset(d, 0, sizeof(*d));
	copy_text(i->id, sizeof(i->id), st, 0);
	copy_text(i->name, sizeof(i->name), st, 1);
	copy_text(i->path, sizeof(i->path), st, 2);
	i->kind = (enum ds_disk_kind)sqlite3_column_int(st, 3);
	d->key.dev = (uint64_t)sqlite3_column_int64(st, 4);
	d->key.ino = (uint64_t)sqlite3_column_int64(st, 5);
	copy_text(d->key.id, sizeof(d->key.id), st, 6);
	i->size = (uint64_t)sqlite3_column_int64(st, 7);
	copy_text(i->fs_type, sizeof(i->fs_type), st, 8);
	copy_text(i->fs_uuid, sizeof(i->fs_uuid), st, 9);
	copy_text(i->fs_label, sizeof(i->fs_label), st, 10);
	copy_text(i->status, sizeof(i->status), st, 11);
	i->owned = sqlite3_column_int(st, 12);
	i->locked = sqlite3_column_int(st, 13);
	i->created = sqlite3_column_int64(st, 14);
}

int catalog_disk_insert(struct catalog *c, const struct disk_row *d)
{
	sqlite3_stmt *st;
	int r = prep(c, "INSERT INTO disks(" DISK_COLS ") VALUES(?1, ?2, ?3, ?4, ?5, "
				     "?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)", &st);

	if (r < 0)
		return r;
	disk_bind(st, d);
	return step_done(c, st);
}

int catalog_disk_update(struct catalog *c, const struct disk_row *d)
{
	sqlite3_stmt *st;
	int r = prep(c, "UPDATE disks SET name = ?2, path = ?3, kind = ?4, "
				     "key_dev = ?5, key_ino = ?6, key_id = ?7, size = ?8, "
				     "fs_type = ?9, fs_uuid = ?10, fs_label = ?11, status = ?12, "
				     "owned = ?13, locked = ?14, created = ?15 WHERE id = ?1", &st);

	if (r < 0)
		return r;
	disk_bind(st, d);
	r = step_done(c, st);
	if (r == 0 && sqlite3_changes(c->db) == 0)
		r = -ENOENT;
	return r;
}

int catalog_disk_get(struct catalog *c, const char *id, struct disk_row *d)
{
	sqlite3_stmt *st;
	int r = prep(c, "SELECT " DISK_COLS " FROM disks WHERE id = ?1", &st);
	int rc;

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		disk_read(st, d);
	r = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : index_errno(rc);
	unprep(c, st);
	return r;
}

int catalog_disk_find_key(struct catalog *c, const struct disk_key *k, char id[DS_ID_SIZE])
{
	sqlite3_stmt *st;
	int r, rc;

	/* Files and loop devices: dev and ino, and the backing file's birth
	 * time (key_id) when both sides know it. Other block devices: key_id. */
	r = prep(c, "SELECT id FROM disks WHERE (key_ino != 0 AND key_dev = ?1 AND "
				 "key_ino = ?2 AND (key_id = '' OR ?3 = '' OR key_id = ?3)) OR "
				 "(key_ino = 0 AND key_id != '' AND key_id = ?3)", &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, (int64_t)k->dev);
	sqlite3_bind_int64(st, 2, (int64_t)k->ino);
	sqlite3_bind_text(st, 3, k->id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		copy_text(id, DS_ID_SIZE, st, 0);
	r = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : index_errno(rc);
	unprep(c, st);
	return r;
}

int catalog_disk_delete(struct catalog *c, const char *id)
{
	sqlite3_stmt *st;
	int r = prep(c, "DELETE FROM disks WHERE id = ?1", &st);

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	r = step_done(c, st);
	if (r == 0 && sqlite3_changes(c->db) == 0)
		r = -ENOENT;
	return r;
}

int catalog_disk_each(struct catalog *c, catalog_disk_fn fn, void *opaque)
{
	sqlite3_stmt *st;
	struct disk_row *d = malloc(sizeof(*d));
	int r, rc;

	if (!d)
		return -ENOMEM;
	r = prep(c, "SELECT " DISK_COLS " FROM disks ORDER BY created, id", &st);
	while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		disk_read(st, d);
		r = fn(d, opaque);
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = index_errno(rc);
	unprep(c, st);
	free(d);
	return r;
}

/* ---- snapshots ------------------------------------------------------------ */

#define SNAP_COLS                                                                         \
	"id, disk_id, name, description, status, progress, disk_size, created, modified, " \
	"retention_days, automatic, manifest, bytes_read, stored_bytes, error, category, "  \
	"instant_access, ia_retention_days, resource_group"

static void snap_bind(sqlite3_stmt *st, const struct ds_snapshot_info *s)
{
	sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, s->disk_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, s->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, s->description, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, s->status, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 6, s->progress);
	sqlite3_bind_int64(st, 7, (int64_t)s->disk_size);
	sqlite3_bind_int64(st, 8, s->created);
	sqlite3_bind_int64(st, 9, s->modified);
	sqlite3_bind_int(st, 10, s->retention_days);
	sqlite3_bind_int(st, 11, s->automatic);
	if (s->has_manifest)
		sqlite3_bind_blob(st, 12, s->manifest.b, DS_CHUNK_ID_SIZE, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 12);
	sqlite3_bind_int64(st, 13, (int64_t)s->bytes_read);
	sqlite3_bind_int64(st, 14, (int64_t)s->stored_bytes);
	sqlite3_bind_text(st, 15, s->error, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 16, s->category, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 17, s->instant_access);
	sqlite3_bind_int(st, 18, s->ia_retention_days);
	sqlite3_bind_text(st, 19, s->resource_group, -1, SQLITE_STATIC);
}

static void snap_read(sqlite3_stmt *st, struct ds_snapshot_info *s)
{
	/* Everything but the 20 KB of tag slots, which ntags bounds and
	 * tags_load fills: a list reads thousands of rows. */
	memset(s, 0, offsetof(struct ds_snapshot_info, tags));
	copy_text(s->id, sizeof(s->id), st, 0);
	copy_text(s->disk_id, sizeof(s->disk_id), st, 1);
	copy_text(s->name, sizeof(s->name), st, 2);
	copy_text(s->description, sizeof(s->description), st, 3);
	copy_text(s->status, sizeof(s->status), st, 4);
	s->progress = sqlite3_column_int(st, 5);
	s->disk_size = (uint64_t)sqlite3_column_int64(st, 6);
	s->created = sqlite3_column_int64(st, 7);
	s->modified = sqlite3_column_int64(st, 8);
	s->retention_days = sqlite3_column_int(st, 9);
	s->automatic = sqlite3_column_int(st, 10);
	if (sqlite3_column_bytes(st, 11) == DS_CHUNK_ID_SIZE) {
		memcpy(s->manifest.b, sqlite3_column_blob(st, 11), DS_CHUNK_ID_SIZE);
		s->has_manifest = true;
	}
	s->bytes_read = (uint64_t)sqlite3_column_int64(st, 12);
	s->stored_bytes = (uint64_t)sqlite3_column_int64(st, 13);
	copy_text(s->error, sizeof(s->error), st, 14);
	copy_text(s->category, sizeof(s->category), st, 15);
	s->instant_access = sqlite3_column_int(st, 16);
	s->ia_retention_days = sqlite3_column_int(st, 17);
	copy_text(s->resource_group, sizeof(s->resource_group), st, 18);
}

/*
 * The snapshot's tags (their own table), in the order they were given.
 * Read in key order (the primary key's) and put in pos order here: with
 * ORDER BY pos, SQLite ran a sorter for every snapshot of a list, and
 * loading tags was 62% of a DescribeSnapshots over 1024 snapshots (perf,
 * DWARF call graphs).
 */
static int tags_load(struct catalog *c, struct ds_snapshot_info *s)
{
	sqlite3_stmt *st;
	int pos[DS_MAX_TAGS];
	int r = prep(c, "SELECT key, value, pos FROM tags WHERE snapshot_id = ?1", &st), rc;

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
	s->ntags = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && s->ntags < DS_MAX_TAGS) {
		int p = sqlite3_column_int(st, 2), i = s->ntags++;
		for (; i > 0 && pos[i - 1] > p; i--) {
			s->tags[i] = s->tags[i - 1];
			pos[i] = pos[i - 1];
		}
		pos[i] = p;
		copy_text(s->tags[i].key, sizeof(s->tags[0].key), st, 0);
		copy_text(s->tags[i].value, sizeof(s->tags[0].value), st, 1);
	}
	unprep(c, st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : index_errno(rc);
}

static int tags_store(struct catalog *c, const struct ds_snapshot_info *s)
{
	sqlite3_stmt *st;
	int r = prep(c, "INSERT OR REPLACE INTO tags(snapshot_id, key, value, pos) "
				     "VALUES(?1, ?2, ?3, ?4)", &st);

	for (int i = 0; r == 0 && i < s->ntags; i++) {
		sqlite3_bind_text(st, 1, s->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, s->tags[i].key, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, s->tags[i].value, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 4, i);
		r = index_errno(sqlite3_step(st));
		sqlite3_reset(st);
	}
	unprep(c, st);
	return r;
}

int catalog_snapshot_insert(struct catalog *c, const struct ds_snapshot_info *s)
{
	sqlite3_stmt *st;
	int r = prep(c, "INSERT INTO snapshots(" SNAP_COLS ", seq) VALUES(?1, ?2, ?3, "
				     "?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, "
				     "?18, ?19, (SELECT coalesce(max(seq), 0) + 1 FROM snapshots))", &st);

	if (r < 0)
		return r;
	snap_bind(st, s);
	r = step_done(c, st);
	return r < 0 ? r : tags_store(c, s);
}

int catalog_snapshot_update(struct catalog *c, const struct ds_snapshot_info *s)
{
	sqlite3_stmt *st;
	int r = prep(c, "UPDATE snapshots SET disk_id = ?2, name = ?3, "
				     "description = ?4, status = ?5, progress = ?6, disk_size = ?7, "
				     "created = ?8, modified = ?9, retention_days = ?10, "
				     "automatic = ?11, manifest = ?12, bytes_read = ?13, "
				     "stored_bytes = ?14, error = ?15, category = ?16, "
				     "instant_access = ?17, ia_retention_days = ?18, "
				     "resource_group = ?19 WHERE id = ?1", &st);

	if (r < 0)
		return r;
	snap_bind(st, s);
	r = step_done(c, st);
	if (r == 0 && sqlite3_changes(c->db) == 0)
		r = -ENOENT;
	return r;
}

int catalog_snapshot_get(struct catalog *c, const char *id, struct ds_snapshot_info *s)
{
	sqlite3_stmt *st;
	int r = prep(c, "SELECT " SNAP_COLS " FROM snapshots WHERE id = ?1", &st);
	int rc;

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		snap_read(st, s);
	r = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : index_errno(rc);
	unprep(c, st);
	return r < 0 ? r : tags_load(c, s);
}

int catalog_snapshot_delete(struct catalog *c, const char *id)
{
	sqlite3_stmt *st;
	int r = prep(c, "DELETE FROM snapshots WHERE id = ?1", &st);

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	r = step_done(c, st);
	if (r == 0 && sqlite3_changes(c->db) == 0)
		r = -ENOENT;
	if (r == 0 && prep(c, "DELETE FROM tags WHERE snapshot_id = ?1", &st) == 0) {
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		r = step_done(c, st);
	}
	return r;
}

int catalog_snapshot_each(struct catalog *c, const char *disk_id, catalog_snapshot_fn fn,
			  void *opaque)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	sqlite3_stmt *st;
	int r, rc;

	if (!s)
		return -ENOMEM;
	r = prep(c, disk_id ? "SELECT " SNAP_COLS " FROM snapshots WHERE disk_id = ?1 "
					   "ORDER BY seq"
					 : "SELECT " SNAP_COLS " FROM snapshots ORDER BY seq",
			  &st);
	if (r == 0 && disk_id)
		sqlite3_bind_text(st, 1, disk_id, -1, SQLITE_STATIC);
	while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		snap_read(st, s);
		r = tags_load(c, s);
		if (r == 0)
			r = fn(s, opaque);
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = index_errno(rc);
	unprep(c, st);
	free(s);
	return r;
}

int catalog_fail_progressing(struct catalog *c, const char *why)
{
	sqlite3_stmt *st;
	int r = prep(c, "UPDATE snapshots SET status = 'failed', error = ?1 "
				     "WHERE status = 'progressing'", &st);

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, why, -1, SQLITE_STATIC);
	r = step_done(c, st);
	return r < 0 ? r : sqlite3_changes(c->db);
}

/* ---- resource groups ----------------------------------------------------- */

int catalog_rg_insert(struct catalog *c, const char *id, const char *name, int64_t created)
{
	sqlite3_stmt *st;
	int r = prep(c, "INSERT INTO resource_groups(id, name, created) "
				     "VALUES(?1, ?2, ?3)", &st);

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, created);
	return step_done(c, st);
}

int catalog_rg_get(struct catalog *c, const char *id, char *name, size_t size, int64_t *created)
{
	sqlite3_stmt *st;
	int r = prep(c, "SELECT name, created FROM resource_groups WHERE id = ?1", &st);
	int rc;

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		if (name)
			copy_text(name, size, st, 0);
		if (created)
			*created = sqlite3_column_int64(st, 1);
	}
	r = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : index_errno(rc);
	unprep(c, st);
	return r;
}

int catalog_rg_each(struct catalog *c, catalog_rg_fn fn, void *opaque)
{
	sqlite3_stmt *st;
	int r = prep(c, "SELECT id, name, created FROM resource_groups ORDER BY created, id",
			      &st);
	int rc = SQLITE_DONE;

	while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW)
		r = fn((const char *)sqlite3_column_text(st, 0),
		       (const char *)sqlite3_column_text(st, 1), sqlite3_column_int64(st, 2), opaque);
	if (r == 0 && rc != SQLITE_DONE && rc != SQLITE_ROW)
		r = index_errno(rc);
	unprep(c, st);
	return r;
}

int catalog_rg_delete(struct catalog *c, const char *id)
{
	sqlite3_stmt *st;
	int r = prep(c, "SELECT 1 FROM snapshots WHERE resource_group = ?1 LIMIT 1",
			      &st);
	int rc;

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	unprep(c, st);
	if (rc == SQLITE_ROW)
		return -ENOTEMPTY;
	r = prep(c, "DELETE FROM resource_groups WHERE id = ?1", &st);
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
	r = step_done(c, st);
	if (r == 0 && sqlite3_changes(c->db) == 0)
		r = -ENOENT;
	return r;
}

/* ---- client tokens --------------------------------------------------------- */

int catalog_token_get(struct catalog *c, int64_t caller, const char *token, char *action,
		      size_t asize, char *fingerprint, size_t fsize, char *result, size_t rsize)
{
	sqlite3_stmt *st;
	int r = prep(c, "SELECT action, fingerprint, result FROM client_tokens "
				     "WHERE caller = ?1 AND token = ?2", &st);
	int rc;

	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, caller);
	sqlite3_bind_text(st, 2, token, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		copy_text(action, asize, st, 0);
		copy_text(fingerprint, fsize, st, 1);
		copy_text(result, rsize, st, 2);
	}
	r = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? -ENOENT : index_errno(rc);
	unprep(c, st);
	return r;
}

int catalog_token_put(struct catalog *c, int64_t caller, const char *token, const char *action,
		      const char *fingerprint, const char *result, int64_t created)
{
	sqlite3_stmt *st;
	int r = prep(c, "INSERT OR REPLACE INTO client_tokens(caller, token, action, "
				     "fingerprint, result, created) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
			      &st);

	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, caller);
	sqlite3_bind_text(st, 2, token, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, action, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, fingerprint, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, result, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, created);
	return step_done(c, st);
}

int catalog_end_resets(struct catalog *c)
{
	int r = index_exec(c->db, "UPDATE disks SET status = 'Available' WHERE status = 'ReIniting'");

	return r < 0 ? r : sqlite3_changes(c->db);
}

int catalog_count_manual(struct catalog *c, const char *disk_id)
{
	sqlite3_stmt *st;
	int r = prep(c, "SELECT count(*) FROM snapshots WHERE disk_id = ?1 AND "
				     "automatic = 0", &st);
	int rc;

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, disk_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	r = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : index_errno(rc);
	unprep(c, st);
	return r;
}
