/*
 * The engine: disks, snapshots and the state folder that holds them.
 *
 * A state folder holds `catalog.db` (disks and snapshots), `store/` (the
 * chunk store) and `disks/` (image files dsnap creates). One process opens
 * it at a time.
 *
 * Errors follow include/dsnap/dsnap.h: 0 or a negative errno. The ones the
 * API layer maps to codes of API.md:
 *   -ENOENT      unknown disk or snapshot id
 *   -ENODEV      the disk's device or file is gone from the host
 *   -EBUSY       the disk is in use in a way that forbids the operation
 *                (mounted, open for writing, being reset)
 *   -EALREADY    a snapshot of this disk is already being created
 *   -EDQUOT      the disk already has DS_MAX_MANUAL_SNAPSHOTS snapshots
 *   -ENOTSUP     a path of a kind that cannot be a disk (character device,
 *                directory, ...)
 *   -EEXIST      the path is already registered, or an output exists
 *   -ENOLCK      the disk is locked by the administrator
 *   -ENOSPC      a target smaller than the snapshot, or a full store
 *   -EINVAL      a malformed argument
 */
#ifndef DSNAP_ENGINE_H
#define DSNAP_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include <dsnap/chunk.h>
#include <dsnap/dsnap.h>

#define DS_ID_SIZE 24 /* "d-" or "s-" + 20 lowercase letters/digits + NUL */
#define DS_PATH_MAX 4096
#define DS_MAX_MANUAL_SNAPSHOTS 256

struct ds_engine;

struct ds_engine_options {
	uint32_t chunk_size;      /* for a new store; 0 = default */
	int max_copies_per_disk;  /* snapshots of one disk created at once; 0 = 1 */
	int fuse_transport;       /* attached disks: 0 auto, 1 io_uring only, 2 /dev/fuse */
	uint64_t copy_max_rate;   /* bytes per second a snapshot's copy reads at most; 0 = no limit */
	uint64_t copy_busy_rate;  /* bytes per second an attached disk's copy reads at most while
				   * the disk's users are busy (its guaranteed rate is half of it);
				   * 0 = 16 MiB/s */
	int max_running_copies;   /* copies of disks not attached that read at once (the rest
				   * wait their turn, progressing at 0%); 0 = one per CPU, at least 2 */
	int64_t overlay_prewrite; /* bytes of an attached disk's overlay log written in advance
				   * (cheap redirected writes); 0 = the disk's size, at most
				   * 4 GiB; < 0 = none */
};

/*
 * Opens (creating when missing) the state folder. Snapshots that were
 * `progressing` when the last process stopped are marked `failed` here.
 */
DS_EXPORT int ds_engine_open(const char *state_dir, const struct ds_engine_options *opt,
			     struct ds_engine **out);
/* Stops running copies (their snapshots end `failed`) and closes. */
DS_EXPORT void ds_engine_close(struct ds_engine *e);
/* Stops running copies now and refuses new ones (-ECANCELED): the first
 * step of a shutdown, so nothing waits for a copy to end. */
DS_EXPORT void ds_engine_cancel_copies(struct ds_engine *e);
DS_EXPORT struct ds_store *ds_engine_store(struct ds_engine *e);
/* Snapshots of one disk that may be created at once. */
DS_EXPORT int ds_engine_max_copies(const struct ds_engine *e);

enum ds_disk_kind { DS_DISK_FILE = 0, DS_DISK_LOOP = 1, DS_DISK_BLOCK = 2 };

/* Names hold up to 128 characters, descriptions 256, tags 128: UTF-8
 * needs up to 4 bytes a character. */
#define DS_NAME_MAX (4 * 128 + 1)
#define DS_DESCRIPTION_MAX (4 * 256 + 1)

struct ds_disk_info {
	char id[DS_ID_SIZE];
	char name[DS_NAME_MAX];
	char path[DS_PATH_MAX]; /* where the disk is now */
	enum ds_disk_kind kind;
	char status[16];        /* Available, In_use, ReIniting */
	uint64_t size;          /* bytes */
	char fs_type[32], fs_uuid[64], fs_label[128]; /* libblkid; "" when none */
	int64_t created;        /* Unix seconds */
	bool owned;             /* an image file dsnap created (deleted with the disk) */
	bool locked;            /* administrator lock: every operation refused */
	bool present;           /* found on the host just now (path is current) */
	char device[32];        /* when attached: the loop device users open */
	char transport[16];     /* when attached: "io_uring" or "/dev/fuse" */
};

/*
 * Registers a block device (loop device, LVM LV, partition, whole disk) or
 * a raw image file. -ENOTSUP for other kinds, -EEXIST when that disk is
 * already registered (its id is still written to id_out).
 */
DS_EXPORT int ds_disk_register(struct ds_engine *e, const char *path, const char *name,
			       char id_out[DS_ID_SIZE]);
/* Creates a new sparse image file of size bytes in the state folder. */
DS_EXPORT int ds_disk_create(struct ds_engine *e, uint64_t size, const char *name,
			     char id_out[DS_ID_SIZE]);
/* Creates a new image file in the state folder filled from a snapshot. */
DS_EXPORT int ds_disk_create_from_snapshot(struct ds_engine *e, const char *snapshot_id,
					   const char *name, char id_out[DS_ID_SIZE]);
/* Whether dsnapd serves the disk now (AttachDisk); false for an unknown id. */
DS_EXPORT bool ds_disk_is_attached(struct ds_engine *e, const char *id);
/* Fills info, with path re-resolved (a renumbered loop device is found
 * again by its backing file); info->present is false when it is gone. */
DS_EXPORT int ds_disk_get(struct ds_engine *e, const char *id, struct ds_disk_info *info);
typedef int (*ds_disk_fn)(const struct ds_disk_info *d, void *opaque);
DS_EXPORT int ds_disk_list(struct ds_engine *e, ds_disk_fn fn, void *opaque);
/* Forgets a disk (and deletes its image if dsnap created it). -EBUSY while
 * one of its snapshots is being created. Its snapshots stay. */
DS_EXPORT int ds_disk_delete(struct ds_engine *e, const char *id);
DS_EXPORT int ds_disk_set_locked(struct ds_engine *e, const char *id, bool locked);

/*
 * Attaches a disk: dsnapd serves it through its own FUSE server and a loop
 * device with direct I/O (device_out: "/dev/loopN"); the disk is In_use
 * and every read and write passes through dsnapd. Root only (-EPERM).
 * -EBUSY when it is not Available (attached, being reset or snapshotted).
 */
DS_EXPORT int ds_disk_attach(struct ds_engine *e, const char *id, char device_out[32]);
/* Turns FUSE over io_uring on in the kernel (/sys/module/fuse/parameters/
 * enable_uring); root only. Disks attached afterwards may use it. */
DS_EXPORT int ds_fuse_uring_enable(bool on);
/* Detaches; -EBUSY while the device is mounted or held open exclusively,
 * -EINVAL when it is not attached. */
DS_EXPORT int ds_disk_detach(struct ds_engine *e, const char *id);

#define DS_MAX_TAGS 20

struct ds_tag {
	char key[DS_NAME_MAX];
	char value[DS_NAME_MAX];
};

struct ds_snapshot_params {
	const char *name;        /* NULL = none */
	const char *description; /* NULL = none */
	int retention_days;      /* 0 = kept until deleted */
	bool automatic;          /* made by a policy: SnapshotType auto */
	const char *category;    /* NULL = "Standard" */
	bool instant_access;
	int ia_retention_days;   /* 0 = none */
	const char *resource_group; /* NULL = none; must exist (-ENXIO otherwise) */
	int ntags;
	const struct ds_tag *tags;
};

struct ds_snapshot_info {
	char id[DS_ID_SIZE];
	char disk_id[DS_ID_SIZE];
	char name[DS_NAME_MAX];
	char description[DS_DESCRIPTION_MAX];
	char status[16];      /* progressing, accomplished, failed */
	int progress;         /* percent, 0..100 */
	uint64_t disk_size;   /* bytes */
	int64_t created, modified; /* Unix seconds */
	int retention_days;   /* 0 = none */
	bool automatic;
	bool has_manifest;
	ds_chunk_id manifest; /* root, when accomplished */
	uint64_t bytes_read;  /* bytes the copy read from the disk */
	uint64_t stored_bytes;/* bytes the copy added to the store */
	char error[256];      /* why it failed */
	char category[16];
	bool instant_access;
	int ia_retention_days;
	char resource_group[DS_ID_SIZE + 8];
	int ntags;
	struct ds_tag tags[DS_MAX_TAGS];
};

/*
 * Takes a snapshot of a disk that is not attached. Returns once the point
 * in time is fixed (the device is held, or the image cloned or leased) with
 * the snapshot `progressing`; the copy runs in the background.
 * -EBUSY when no point in time can be guaranteed (mounted, open for writing
 * with no reflink), -EALREADY when another snapshot of the disk is running
 * (-EUSERS when max_copies_per_disk > 1 and that many are running), -ENXIO
 * for an unknown resource group.
 */
DS_EXPORT int ds_snapshot_create(struct ds_engine *e, const char *disk_id,
				 const struct ds_snapshot_params *p, char id_out[DS_ID_SIZE]);
/* Waits until the snapshot is no longer `progressing`; 0 if accomplished,
 * else the copy's error. */
DS_EXPORT int ds_snapshot_wait(struct ds_engine *e, const char *id);
DS_EXPORT int ds_snapshot_get(struct ds_engine *e, const char *id, struct ds_snapshot_info *info);
/* Calls fn for each snapshot (of disk_id, or all) in creation order; fn runs
 * with the engine locked and must not call the engine. */
typedef int (*ds_snapshot_fn)(const struct ds_snapshot_info *s, void *opaque);
DS_EXPORT int ds_snapshot_list(struct ds_engine *e, const char *disk_id, ds_snapshot_fn fn,
			       void *opaque);
/* Releases a snapshot; its chunks go at the next ds_engine_gc(). -EBUSY
 * while it is progressing. */
DS_EXPORT int ds_snapshot_delete(struct ds_engine *e, const char *id);
/* Reads every chunk of the snapshot; returns the number of bad chunks (>= 0).
 * -EBUSY while it is progressing, -ENODATA for a failed one. */
DS_EXPORT int64_t ds_snapshot_verify(struct ds_engine *e, const char *id);
/* Writes the snapshot into a new sparse image file (must not exist). */
DS_EXPORT int ds_snapshot_export(struct ds_engine *e, const char *id, const char *path);

/*
 * Instant access: a snapshot can be read as soon as its point in time is
 * fixed. Export and CreateDisk of a snapshot whose copy runs read the
 * chunks not copied yet from the disk (which keeps them for the copy) and
 * the rest from the store; during an incremental copy they return once it
 * has ended, and fail if it failed. Attach serves a snapshot (being copied or
 * accomplished) read-only as a loop device of its own (device_out,
 * "/dev/loopN"); root only (-EPERM). -EEXIST when it is attached already,
 * -ENODATA when it failed, -EAGAIN while another attach or detach runs.
 * A snapshot that is attached cannot be deleted (-EBUSY). Detach is refused
 * with -EBUSY while the device is mounted or open, -EINVAL when not
 * attached. Attached snapshots are not attached again after a restart.
 */
DS_EXPORT int ds_snapshot_attach(struct ds_engine *e, const char *id, char device_out[32]);
DS_EXPORT int ds_snapshot_detach(struct ds_engine *e, const char *id);

/* Writes the snapshot back onto its disk (or another of the same size).
 * -EBUSY while the disk is mounted or open exclusively by someone else. */
DS_EXPORT int ds_disk_reset(struct ds_engine *e, const char *disk_id, const char *snapshot_id);

/* Changes name, description (NULL: keep) and retention (-1: keep, 0: none). */
DS_EXPORT int ds_snapshot_modify(struct ds_engine *e, const char *id, const char *name,
				 const char *description, int retention_days);

/* Number of snapshots, and the bytes the store holds for all of them. */
DS_EXPORT int ds_snapshot_usage(struct ds_engine *e, uint64_t *count, uint64_t *stored_bytes);

/*
 * Releases every snapshot whose retention has passed at time now (Unix
 * seconds; RetentionDays counts from creation), then collects their chunks
 * when any was released. *released: how many. Snapshots still progressing
 * are left for a later call.
 */
DS_EXPORT int ds_engine_expire(struct ds_engine *e, int64_t now, int *released);

/* Resource groups: named groups of snapshots, "rg-" ids. */
DS_EXPORT int ds_rg_create(struct ds_engine *e, const char *name, char id_out[DS_ID_SIZE + 8]);
DS_EXPORT int ds_rg_exists(struct ds_engine *e, const char *id);
typedef int (*ds_rg_fn)(const char *id, const char *name, int64_t created, void *opaque);
DS_EXPORT int ds_rg_list(struct ds_engine *e, ds_rg_fn fn, void *opaque);
/* -ENOTEMPTY while snapshots belong to it. */
DS_EXPORT int ds_rg_delete(struct ds_engine *e, const char *id);

/*
 * ClientToken records (for the API's idempotence): 0 and the stored action,
 * fingerprint and result of (caller, token), or -ENOENT.
 */
DS_EXPORT int ds_token_get(struct ds_engine *e, int64_t caller, const char *token,
			   char action[64], char fingerprint[65], char result[64]);
DS_EXPORT int ds_token_put(struct ds_engine *e, int64_t caller, const char *token,
			   const char *action, const char *fingerprint, const char *result);

struct ds_gc_stats;
/* Removes chunks that no snapshot uses. Waits for running copies. */
DS_EXPORT int ds_engine_gc(struct ds_engine *e, struct ds_gc_stats *st);

#endif
