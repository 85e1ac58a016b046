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

/* index_open's flags. */
#define INDEX_CREATE 1u /* create the file if it does not exist */
/* Only this process may open the file: SQLite's "unix-excl" VFS takes an
 * exclusive lock at the first read and keeps the WAL's index in heap
 * memory, so a transaction takes no file locks (2 fcntl calls per
 * statement otherwise). Connections of this process share it as usual. */
#define INDEX_PRIVATE 2u

/* Opens the index at path with WAL and synchronous=FULL. 0 or -errno
 * (-EBADMSG for a file that is not SQLite, -EBUSY when INDEX_PRIVATE and
 * another process has it open). */
int index_open(const char *path, unsigned flags, sqlite3 **out);

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
