#include <string.h>

#include "store/index.h"
#include "util/util.h"

static const char schema[] =
	"CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
	"CREATE TABLE packs("
	"  id INTEGER PRIMARY KEY,"
	"  committed INTEGER NOT NULL"
	");"
	"CREATE TABLE chunks("
	"  id BLOB PRIMARY KEY,"
	"  pack INTEGER NOT NULL,"
	"  off INTEGER NOT NULL,"
	"  len INTEGER NOT NULL,"
	"  raw_len INTEGER NOT NULL"
	") WITHOUT ROWID;"
	"CREATE INDEX chunks_by_pack ON chunks(pack, off);";

int index_errno(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_OK:
	case SQLITE_DONE:
	case SQLITE_ROW:
		return 0;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_READONLY:
	case SQLITE_PERM:
		return -EACCES;
	case SQLITE_CANTOPEN:
		return -ENOENT;
	case SQLITE_NOTADB:
	case SQLITE_CORRUPT:
		return -EBADMSG;
	default:
		return -EIO;
	}
}

int index_exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

	if (rc != SQLITE_OK) {
		log_error("index: %s: %s", sql, msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return index_errno(rc);
	}
	return 0;
}

int index_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **stmt)
{
	int rc = sqlite3_prepare_v2(db, sql, -1, stmt, NULL);

	if (rc != SQLITE_OK) {
		log_error("index: prepare %s: %s", sql, sqlite3_errmsg(db));
		return index_errno(rc);
	}
	return 0;
}

int index_open(const char *path, unsigned flags, sqlite3 **out)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db,
				 SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX |
					 (flags & INDEX_CREATE ? SQLITE_OPEN_CREATE : 0),
				 flags & INDEX_PRIVATE ? "unix-excl" : NULL);
	int r;

	if (rc != SQLITE_OK) {
		r = index_errno(rc);
		sqlite3_close(db);
		return r;
	}
	sqlite3_busy_timeout(db, 10000);
	/* WAL: readers never block the writer. synchronous=FULL: a commit is
	 * durable when it returns, which put()'s contract promises. */
	r = index_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
			   "PRAGMA cache_size=-65536; PRAGMA foreign_keys=OFF;");
	if (r < 0) {
		sqlite3_close(db);
		return r;
	}
	*out = db;
	return 0;
}

static int meta_put(sqlite3 *db, const char *key, const void *blob, size_t len, int64_t num)
{
	sqlite3_stmt *st;
	int r = index_prepare(db, "INSERT INTO meta(key, value) VALUES(?1, ?2)", &st);

	if (r < 0)
		return r;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	if (blob)
		sqlite3_bind_blob(st, 2, blob, (int)len, SQLITE_STATIC);
	else
		sqlite3_bind_int64(st, 2, num);
	r = index_errno(sqlite3_step(st));
	sqlite3_finalize(st);
	return r;
}

int index_init(sqlite3 *db, const struct index_meta *m)
{
	int r = index_exec(db, "BEGIN IMMEDIATE");

	if (r < 0)
		return r;
	r = index_exec(db, schema);
	if (r == 0)
		r = meta_put(db, "format", NULL, 0, INDEX_FORMAT_VERSION);
	if (r == 0)
		r = meta_put(db, "chunk_size", NULL, 0, m->chunk_size);
	if (r == 0)
		r = meta_put(db, "pack_size", NULL, 0, (int64_t)m->pack_size);
	if (r == 0)
		r = meta_put(db, "secret", m->secret, sizeof(m->secret), 0);
	if (r == 0)
		r = meta_put(db, "store_id", m->store_id, 16, 0);
	if (r == 0)
		return index_exec(db, "COMMIT");
	index_exec(db, "ROLLBACK");
	return r;
}

int index_read_meta(sqlite3 *db, struct index_meta *m)
{
	sqlite3_stmt *st;
	int seen = 0, r;
	int64_t format = -1, cs = -1, ps = -1;

	/* A file that is not a dsnap index fails here, not later. */
	if (sqlite3_prepare_v2(db, "SELECT key, value FROM meta", -1, &st, NULL) != SQLITE_OK)
		return -EBADMSG;
	while ((r = sqlite3_step(st)) == SQLITE_ROW) {
		const char *key = (const char *)sqlite3_column_text(st, 0);
		if (!key)
			continue;
		if (strcmp(key, "format") == 0) {
			format = sqlite3_column_int64(st, 1);
			seen |= 1;
		} else if (strcmp(key, "chunk_size") == 0) {
			cs = sqlite3_column_int64(st, 1);
			seen |= 2;
		} else if (strcmp(key, "pack_size") == 0) {
			ps = sqlite3_column_int64(st, 1);
			seen |= 16;
		} else if (strcmp(key, "secret") == 0 &&
			   sqlite3_column_bytes(st, 1) == (int)sizeof(m->secret)) {
			memcpy(m->secret, sqlite3_column_blob(st, 1), sizeof(m->secret));
			seen |= 4;
		} else if (strcmp(key, "store_id") == 0 && sqlite3_column_bytes(st, 1) == 16) {
			memcpy(m->store_id, sqlite3_column_blob(st, 1), 16);
			seen |= 8;
		}
	}
	sqlite3_finalize(st);
	if (r != SQLITE_DONE)
		return index_errno(r);
	if ((seen & 1) && format > INDEX_FORMAT_VERSION)
		return -EPROTONOSUPPORT;
	if (seen != 31)
		return -EBADMSG;
	if (format < 1 || cs < DS_CHUNK_SIZE_MIN || cs > DS_CHUNK_SIZE_MAX || (cs & (cs - 1)) ||
	    ps < 1024 * 1024)
		return -EBADMSG;
	m->chunk_size = (uint32_t)cs;
	m->pack_size = (uint64_t)ps;
	return 0;
}

int index_lookup(sqlite3_stmt *stmt, const ds_chunk_id *id, struct chunk_loc *loc)
{
	int rc, r;

	sqlite3_bind_blob(stmt, 1, id->b, DS_CHUNK_ID_SIZE, SQLITE_STATIC);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		loc->pack = (uint32_t)sqlite3_column_int64(stmt, 0);
		loc->off = (uint64_t)sqlite3_column_int64(stmt, 1);
		loc->len = (uint32_t)sqlite3_column_int64(stmt, 2);
		loc->raw_len = (uint32_t)sqlite3_column_int64(stmt, 3);
		r = 0;
	} else if (rc == SQLITE_DONE) {
		r = -ENOENT;
	} else {
		r = index_errno(rc);
	}
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
	return r;
}
