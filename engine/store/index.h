/*
 * The store's SQLite index: meta, packs and chunks tables.
 * Schema and meaning in doc/store-format.md.
 */
#ifndef DSNAP_STORE_INDEX_H
#define DSNAP_STORE_INDEX_H
#ifndef DSNAP_INTERNAL
#error "engine/store/index.h is private to libdsnap"
#endif

#include <stdint.h>

#include <sqlite3.h>

#include <dsnap/chunk.h>

#define INDEX_FORMAT_VERSION 1

struct chunk_loc {
	uint32_t pack;
	uint64_t off;
	uint32_t len; /* record length: header + payload */
	uint32_t raw_len;
};

/* Opens (creating when create is set) the index at path with WAL and
 * synchronous=FULL. 0 or -errno (-EBADMSG for a file that is not SQLite). */
int index_open(const char *path, int create, sqlite3 **out);

struct index_meta {
	uint32_t chunk_size;
	uint64_t pack_size;
	uint8_t secret[192];
	uint8_t store_id[16];
};

/* Creates the schema and meta rows in a new index. */
int index_init(sqlite3 *db, const struct index_meta *m);

/* Reads meta. -EBADMSG when rows are missing or malformed,
 * -EPROTONOSUPPORT for a newer format. */
int index_read_meta(sqlite3 *db, struct index_meta *m);

/* Runs one SQL statement without results. 0 or -EIO (logged). */
int index_exec(sqlite3 *db, const char *sql);

/* Maps an SQLite result code to -errno (SQLITE_FULL -> -ENOSPC ...). */
int index_errno(int rc);

/* Prepares stmt, logging failures. 0 or -EIO. */
int index_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **stmt);

/* Looks up id with a prepared "SELECT pack, off, len, raw_len FROM chunks
 * WHERE id = ?1" statement. 0, -ENOENT, or -EIO. */
int index_lookup(sqlite3_stmt *stmt, const ds_chunk_id *id, struct chunk_loc *loc);

#endif
