/*
 * The copy-on-write tracker of an attached disk: it keeps a snapshot's
 * point in time in the disk's own backing (the base) by redirecting new
 * writes to an overlay file while the copy runs, merges them back behind
 * the copier, and keeps the changed-block bitmap. cow.c opens with the
 * design note.
 */
#ifndef DSNAP_COW_H
#define DSNAP_COW_H
#ifndef DSNAP_INTERNAL
#error "engine/cow/cow.h is private to libdsnap"
#endif

#include <stdbool.h>
#include <stdint.h>

#define COW_BLOCK 4096u
#define COW_SINCE_MAX 64

enum cow_where { COW_BASE = 0, COW_OVERLAY = 1 };

struct cow;

struct cow_stats {
	uint64_t overlay_bytes;      /* redirected to the overlay now */
	uint64_t overlay_peak;       /* the most since the last cow_start */
	uint64_t merged_bytes;       /* merged back since the last cow_start */
	uint64_t log_ready;          /* bytes of the overlay log written in advance */
	bool active, busy, failed;
};

/*
 * Opens the tracker of the disk whose backing is base_path (an image file
 * or block device), with its overlay log at overlay_path and its maps at
 * overlay_path.map and .dmap (created when missing). Whatever an earlier
 * run left in the overlay is merged into the base first (crash recovery):
 * *recovered is set to the bytes merged. The log's first prewrite bytes
 * (at most the disk's size) are written in advance, while no snapshot
 * runs: redirected writes into them change no file system metadata.
 * chunk_size is the store's (a power of two, at most 4 MiB).
 */
int cow_open(const char *base_path, const char *overlay_path, uint32_t chunk_size,
	     uint64_t prewrite, struct cow **out, uint64_t *recovered);
/* Waits for a running merge, then closes. The overlay's map is empty
 * after it unless the merge failed (then the next open merges it); the
 * log keeps its written slots. */
void cow_close(struct cow *c);

/* Removes a closed tracker's overlay log and its maps (the disk is gone). */
void cow_remove(const char *overlay_path);

uint64_t cow_size(const struct cow *c);
/* The base fds (O_DIRECT one is -1 where the base does not take O_DIRECT). */
int cow_base_fd(const struct cow *c, bool direct);
int cow_overlay_fd(const struct cow *c, bool direct);

/* ---- the I/O path (the frontend) -------------------------------------------- */

/*
 * Every read, write, fsync and discard is bracketed by cow_enter and
 * cow_leave. cow_enter returns false while the tracker holds I/O for a
 * moment (fixing a point in time, settling the overlay): the caller waits
 * (cow_wait_open) or, on an event loop, parks the request until the wake
 * callback runs.
 */
bool cow_enter(struct cow *c);
/* Requests entered so far (the disk's users' I/O rate, for the throttle). */
uint64_t cow_requests(struct cow *c);
void cow_leave(struct cow *c);
void cow_wait_open(struct cow *c);
void cow_set_wake(struct cow *c, void (*wake)(void *), void *arg);

/*
 * Where the bytes at [off, off + len) of the disk are read from or written
 * to: the file (base or overlay) and *at, the offset in it; the answer
 * holds for the first *run bytes (at least up to the end of the first
 * block, or len). A write routed to new overlay slots takes them: give
 * cow_written the same at. Writes may only go to the overlay in whole
 * blocks, or into blocks the overlay has already: cow_write_needs_fill
 * says when a write must take cow_pwrite instead (it fills a partial
 * block from the base).
 */
enum cow_where cow_route(struct cow *c, bool write, uint64_t off, uint32_t len, uint32_t *run,
			 uint64_t *at);
bool cow_write_needs_fill(struct cow *c, uint64_t off, uint32_t len);
/* A write of [off, off + len) of the disk, to where at at, completed. */
void cow_written(struct cow *c, enum cow_where where, uint64_t off, uint32_t len, uint64_t at);
/*
 * An overlay write failed with err (-ENOSPC...): when the overlay cannot
 * grow, the snapshot fails, writes go to the base again, and true is
 * returned (retry the write). False: err is the write's answer.
 */
bool cow_overlay_error(struct cow *c, int err);

/* Synchronous I/O through the tracker (the /dev/fuse transport, unaligned
 * writes, discards): bytes done or -errno. */
ssize_t cow_pread(struct cow *c, void *buf, size_t len, uint64_t off);
ssize_t cow_pwrite(struct cow *c, const void *buf, size_t len, uint64_t off);
/* fallocate on the disk: punching (discard) and zeroing ranges. */
int cow_fallocate(struct cow *c, int mode, uint64_t off, uint64_t len);
/* Makes the overlay's writes and its map durable (the base's fdatasync is
 * the caller's). */
int cow_sync_overlay(struct cow *c);

/* ---- snapshots (the engine) ------------------------------------------------- */

/*
 * Fixes a point in time: from its return until cow_copy_end, the base
 * keeps every block of a chunk the copier has not read. It waits for the
 * merge of an earlier snapshot, and gives up with -EBUSY after 120 s.
 * changed_out (nchunks bits, may be NULL) receives the chunks written
 * since the last cow_start whose snapshot accomplished, since_out the id
 * that snapshot was given (cow_copy_end), both taken together; the live
 * bitmap starts again empty. *gen_out names this snapshot's merge.
 */
int cow_start(struct cow *c, uint64_t *changed_out, char since_out[COW_SINCE_MAX],
	      uint64_t *gen_out);
/* The copier read chunks [first, first + n) of the base. */
void cow_copied(struct cow *c, uint64_t first, uint64_t n);
/* The copy ended. ok: the bitmap now counts from new_since. !ok puts
 * the bits cow_start took back into the live bitmap (the next snapshot
 * must read those chunks again). */
void cow_copy_end(struct cow *c, bool ok, const uint64_t *changed_taken, const char *new_since);
/* The snapshot failed on the tracker's side (the overlay could not grow). */
bool cow_failed(struct cow *c);
/* Whether the copier has read (and stored) chunk i of the running snapshot;
 * acquire: what the copier wrote before cow_copied is visible. While it is
 * false (and the snapshot has not failed), the base holds the chunk's point
 * in time. */
bool cow_chunk_copied(struct cow *c, uint64_t i);
/* Waits until the merge of snapshot gen (0: whatever runs) has ended:
 * everything redirected is merged back and the map emptied. */
void cow_wait_merged(struct cow *c, uint64_t gen);
/* Reads (out) and/or sets (set) the snapshot the bitmap counts from. */
void cow_since(struct cow *c, char out[COW_SINCE_MAX], const char *set);
void cow_get_stats(struct cow *c, struct cow_stats *st);

/* ---- changed-block tracking ------------------------------------------------- */

uint64_t cow_nchunks(const struct cow *c);
/* Marks every chunk changed (the bitmap cannot be trusted). */
void cow_distrust(struct cow *c);
/* Copies the live bitmap out / in (nchunks bits). */
void cow_bitmap_get(struct cow *c, uint64_t *bits);
void cow_bitmap_set(struct cow *c, const uint64_t *bits);

/* The bitmap's file (cbt.c). cbt_save writes it clean, with cow_since
 * and the base's fingerprint. cbt_load returns 1 when the file was trusted
 * (bitmap and since loaded, the file marked dirty), else 0: every chunk
 * counts as changed, since is "". A block device's bitmap is never
 * trusted after a detach: its writes leave no trace dsnap can check. */
int cbt_save(const char *path, struct cow *c, const char *base_path);
int cbt_load(const char *path, struct cow *c, const char *base_path);

#endif
