/*
 * The catalog: what dsnap knows about disks and snapshots, in SQLite
 * (`catalog.db` in the state folder, WAL). Chunks live in the store; the
 * catalog holds each snapshot's manifest root. Schema in doc/catalog.md.
 *
 * One connection, serialised by the caller (struct ds_engine's lock);
 * every function returns 0 or -errno (-ENOENT for an unknown id).
 */
#ifndef DSNAP_CATALOG_H
#define DSNAP_CATALOG_H
#ifndef DSNAP_INTERNAL
#error "engine/catalog/catalog.h is private to libdsnap"
#endif

#include <sqlite3.h>

#include <dsnap/engine.h>

struct catalog;

int catalog_open(const char *path, struct catalog **out);
void catalog_close(struct catalog *c);

/* Commits are durable only once the WAL is next synced (synchronous=NORMAL;
 * safe from a process crash, the last ones may be lost to a power failure). */
/* Makes every commit so far durable (fdatasync of the WAL). Safe to call
 * without the caller's lock, concurrently with other catalog calls. */
int catalog_sync(struct catalog *c);
/* Copies the WAL into the database when it has grown past a few MiB, on a
 * connection of its own: call it without the caller's lock (commits never
 * checkpoint). Concurrent calls: one runs, the others return. */
int catalog_checkpoint(struct catalog *c);

int catalog_begin(struct catalog *c);
int catalog_commit(struct catalog *c);
void catalog_rollback(struct catalog *c);

/* Stable identity of a disk, to find it again after renumbering. */
struct disk_key {
	uint64_t dev, ino; /* backing file (files, loop devices); 0 when none */
	char id[320];      /* block devices: by-id name or fs UUID; files and loop
			    * devices: the backing file's "btime:S.NS"; "" when none */
};

struct disk_row {
	struct ds_disk_info info;
	struct disk_key key;
};

int catalog_disk_insert(struct catalog *c, const struct disk_row *d);
int catalog_disk_get(struct catalog *c, const char *id, struct disk_row *d);
/* Finds a registered disk with the same identity; -ENOENT when none. */
int catalog_disk_find_key(struct catalog *c, const struct disk_key *k, char id[DS_ID_SIZE]);
int catalog_disk_update(struct catalog *c, const struct disk_row *d);
int catalog_disk_delete(struct catalog *c, const char *id);
typedef int (*catalog_disk_fn)(const struct disk_row *d, void *opaque);
int catalog_disk_each(struct catalog *c, catalog_disk_fn fn, void *opaque);

int catalog_snapshot_insert(struct catalog *c, const struct ds_snapshot_info *s);
int catalog_snapshot_get(struct catalog *c, const char *id, struct ds_snapshot_info *s);
int catalog_snapshot_update(struct catalog *c, const struct ds_snapshot_info *s);
int catalog_snapshot_delete(struct catalog *c, const char *id);
typedef int (*catalog_snapshot_fn)(const struct ds_snapshot_info *s, void *opaque);
/* Snapshots in creation order; disk_id NULL for all. */
int catalog_snapshot_each(struct catalog *c, const char *disk_id, catalog_snapshot_fn fn,
			  void *opaque);
/* Number of manual (not automatic) snapshots of a disk, or -errno. */
int catalog_count_manual(struct catalog *c, const char *disk_id);
/* Marks every `progressing` snapshot `failed` (after a restart). Returns how many. */
int catalog_fail_progressing(struct catalog *c, const char *why);
/* Makes disks left `ReIniting` by a stop `Available` again. Returns how many. */
int catalog_end_resets(struct catalog *c);

int catalog_rg_insert(struct catalog *c, const char *id, const char *name, int64_t created);
int catalog_rg_get(struct catalog *c, const char *id, char *name, size_t size, int64_t *created);
typedef int (*catalog_rg_fn)(const char *id, const char *name, int64_t created, void *opaque);
int catalog_rg_each(struct catalog *c, catalog_rg_fn fn, void *opaque);
/* -ENOTEMPTY while snapshots belong to it. */
int catalog_rg_delete(struct catalog *c, const char *id);

/* ClientToken records: what a token was used for, so a repeat returns the
 * same result. caller is the uid the token belongs to. */
int catalog_token_get(struct catalog *c, int64_t caller, const char *token, char *action,
		      size_t asize, char *fingerprint, size_t fsize, char *result, size_t rsize);
int catalog_token_put(struct catalog *c, int64_t caller, const char *token, const char *action,
		      const char *fingerprint, const char *result, int64_t created);

#endif
