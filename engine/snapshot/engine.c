/*
 * The engine: disks and snapshots over the catalog, the store and the copier.
 *
 * Notes on the design
 *
 * Creating a snapshot of a disk that is not attached:
 *   1. checks, under the engine lock: the disk exists, is not locked, not
 *      being reset, has no snapshot being created, has fewer than
 *      DS_MAX_MANUAL_SNAPSHOTS; it is found on the host (disk_resolve);
 *   2. the point in time is fixed (disk_pit_take: O_EXCL device, reflink
 *      clone, or read lease); if it cannot be, the request fails and
 *      nothing is recorded;
 *   3. the snapshot is recorded `progressing` and a copy thread started;
 *      the call returns.
 *   4. the copy thread reads the point in time with the copier into the
 *      store (ds_store_add, so it never waits for the disk), then saves the
 *      manifest with a put, which makes every chunk durable; only then is
 *      the snapshot marked `accomplished` with its manifest root. Any
 *      failure (read error, the lease broken by a writer, a full store,
 *      shutdown) marks it `failed` with the reason; the store stays intact
 *      (its own protocol), and chunks already added are garbage for GC.
 * A snapshot `progressing` when the process stopped is marked `failed` at
 * the next open: its point in time is gone.
 *
 * Progress lives in the job while the copy runs (no catalog writes per
 * slab) and is overlaid on what the catalog says.
 *
 * GC and copies: copies hold gc_lock shared for their whole life; GC takes
 * it exclusive, so the live set it computes from the catalog's manifests
 * cannot miss the chunks of a copy that deduplicated against the store.
 *
 * Locking order: gc_lock, then lock. The copy thread takes lock only to
 * finish; nothing holds lock across I/O except the short catalog calls.
 */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <dsnap/engine.h>
#include <dsnap/snapshot.h>
#include <dsnap/store.h>

#include "catalog/catalog.h"
#include "copier/copier.h"
#include "cow/cow.h"
#include "disk/disk.h"
#include "frontend/frontend.h"
#include "snapshot/view.h"
#include "util/util.h"

struct job {
	struct ds_engine *e;
	char snap_id[DS_ID_SIZE];
	char disk_id[DS_ID_SIZE];
	struct disk_pit pit;
	struct copier_job cj;
	/* an attached disk: its tracker keeps the point in time */
	struct cow *cow;
	uint64_t *changed;         /* chunks changed since prev (cow_start) */
	char since[COW_SINCE_MAX]; /* the snapshot the bitmap counts from */
	struct ds_manifest *prev;  /* its manifest */
	struct view *view;         /* the snapshot as an image while it is copied; owns cj.m */
	uint64_t gen;              /* this snapshot's merge */
	atomic_int ioprio;
	struct timespec started;
	/* the throttle: the disk's users' requests per second, measured
	 * over windows of FG_WINDOW_NS */
	atomic_uint_fast64_t fg_requests, fg_ns, fg_rate;
	atomic_bool cancel;
	atomic_int progress;
	pthread_t thread; /* a live disk's copy: its own */
	bool own_thread;
	struct job *queued; /* next in the runners' queue */
	bool recorded; /* the copy's result is in the catalog */
	bool finished; /* ... and the thread is done (a live disk's merge too) */
	int err;       /* the copy's result, once finished */
	struct job *next;
};

/* A disk dsnapd serves (attached). */
struct attached {
	char disk_id[DS_ID_SIZE];
	char path[DS_PATH_MAX];
	struct frontend *f;
	struct cow *cow;
	int users;      /* snapshot requests using cow: detaching waits */
	bool detaching; /* no new snapshot may use cow */
	struct attached *next;
};

/* A snapshot served read-only (AttachSnapshot). */
struct snap_attached {
	char snap_id[DS_ID_SIZE];
	struct frontend *f;
	struct view *v;
	struct snap_attached *next;
};

/* The copier of a live disk runs at idle I/O priority, at most at the busy
 * rate while the disk's users are busy, at normal priority when it falls
 * below half that rate, and free when the overlay grows past its limit: a
 * quarter of the disk, or the overlay log written in advance when that is
 * larger (past it, redirected writes allocate: they cost more than a
 * faster copy). The busy rate: at 64 MiB/s random 4 KiB writers kept
 * 0.84-0.91 of their IOPS during the copy, at 32 0.89, at 16 1.00
 * (bench/RESULTS.md, "The busy rate, measured again"). */
#define COPY_BUSY_RATE_DEFAULT (16ull << 20) /* bytes per second */
#define OVERLAY_SOFT_LIMIT(size) MIN((size) / 4, 4ull << 30)
#define OVERLAY_PREWRITE_DEFAULT (4ull << 30) /* at most the disk's size */
#define FG_WINDOW_NS 200000000ull /* 0.2 s */
#define FG_BUSY 1000 /* requests per second: the disk is in use, the copy yields */
#define RUNNER_NICE 10 /* copies of disks not attached */
#define AUDIT_EVERY 512 /* unchanged chunks: one in this many is read again */
#define INCR_WORKERS_PER_CPU 2 /* an incremental copy's workers (load_prev) */

struct ds_engine {
	char dir[DS_PATH_MAX];
	int lock_fd;
	struct catalog *cat;
	struct ds_store *store;
	pthread_mutex_t lock; /* catalog and jobs */
	pthread_cond_t changed;
	pthread_rwlock_t gc_lock;
	struct job *jobs;
	int max_copies; /* per disk */
	/* Copies of disks not attached run on up to max_running runner
	 * threads, in the order they were created; a live disk's copy has a
	 * thread of its own (its users' writes go to the overlay until it
	 * has read them: it never waits its turn). */
	int max_running, nrunners;
	pthread_t *runners;
	struct job *queue_head, **queue_tail;
	pthread_cond_t queue_cond;
	bool closing; /* runners stop when the queue is empty */
	uint64_t copy_max_rate;
	uint64_t copy_busy_rate;
	int64_t overlay_prewrite;
	bool stopping;  /* no new copies */
	int fuse_transport;
	struct attached *attached;
	struct snap_attached *snaps; /* attached snapshots */
	bool snaps_busy;             /* an attach or detach of a snapshot is under way, */
	char snaps_busy_id[DS_ID_SIZE]; /* of this one (it cannot be deleted meanwhile) */
};

static void reattach_all(struct ds_engine *e);
static void close_tracker(struct ds_engine *e, struct attached *a);
static int set_disk_status(struct ds_engine *e, const char *id, const char *status);
static int disk_update(struct ds_engine *e, const char *id, const char *status, int locked);

/* STATE/sub/id: a disk's overlay ("overlay") or changed-block bitmap ("cbt"). */
static void disk_file(const struct ds_engine *e, const char *sub, const char *id, char *out,
		      size_t size)
{
	snprintf(out, size, "%s/%s/%s", e->dir, sub, id);
}

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

static int path_in(const struct ds_engine *e, const char *name, char *out, size_t size)
{
	int n = snprintf(out, size, "%s/%s", e->dir, name);

	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* ---- open / close ----------------------------------------------------------- */

int ds_engine_open(const char *state_dir, const struct ds_engine_options *opt,
		   struct ds_engine **out)
{
	struct ds_store_options so = {.chunk_size = opt ? opt->chunk_size : 0};
	struct ds_engine *e;
	char path[DS_PATH_MAX + 32];
	int r;

	if (strlen(state_dir) >= sizeof(e->dir))
		return -ENAMETOOLONG;
	if (mkdir(state_dir, 0750) < 0 && errno != EEXIST)
		return -errno;
	e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	snprintf(e->dir, sizeof(e->dir), "%s", state_dir);
	e->lock_fd = -1;
	e->max_copies = opt && opt->max_copies_per_disk > 0 ? opt->max_copies_per_disk : 1;
	e->max_running = opt && opt->max_running_copies > 0
				 ? opt->max_running_copies
				 : (int)MAX(2L, sysconf(_SC_NPROCESSORS_ONLN));
	e->runners = calloc((size_t)e->max_running, sizeof(*e->runners));
	e->queue_tail = &e->queue_head;
	pthread_cond_init(&e->queue_cond, NULL);
	e->copy_max_rate = opt ? opt->copy_max_rate : 0;
	e->copy_busy_rate = opt && opt->copy_busy_rate ? opt->copy_busy_rate : COPY_BUSY_RATE_DEFAULT;
	e->overlay_prewrite = opt ? opt->overlay_prewrite : 0;
	e->fuse_transport = opt ? opt->fuse_transport : 0;
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->changed, NULL);
	pthread_rwlock_init(&e->gc_lock, NULL);

	r = e->runners ? path_in(e, "lock", path, sizeof(path)) : -ENOMEM;
	if (r == 0) {
		e->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
		if (e->lock_fd < 0)
			r = -errno;
		else if (flock(e->lock_fd, LOCK_EX | LOCK_NB) < 0)
			r = errno == EWOULDBLOCK ? -EBUSY : -errno;
	}
	if (r == 0 && (r = path_in(e, "disks", path, sizeof(path))) == 0 && mkdir(path, 0750) < 0 &&
	    errno != EEXIST)
		r = -errno;
	if (r == 0)
		r = path_in(e, "catalog.db", path, sizeof(path));
	if (r == 0)
		r = catalog_open(path, &e->cat);
	if (r == 0)
		r = path_in(e, "store", path, sizeof(path));
	if (r == 0) {
		r = ds_store_open(path, &e->store);
		if (r == -ENOENT) {
			r = ds_store_create(path, &so);
			if (r == 0)
				r = ds_store_open(path, &e->store);
		}
	}
	if (r == 0) {
		r = catalog_fail_progressing(e->cat, "interrupted: dsnap stopped during the copy");
		if (r > 0)
			log_warn("engine: %d snapshot(s) interrupted by a stop are now failed", r);
		r = r < 0 ? r : 0;
	}
	if (r == 0) {
		/* A reset cut short leaves a partial image; the disk is usable
		 * again so it can be reset once more. */
		r = catalog_end_resets(e->cat);
		if (r > 0)
			log_warn("engine: %d disk(s) were being reset when dsnap stopped; they hold "
				 "a partial image until reset again", r);
		r = r < 0 ? r : 0;
	}
	if (r == 0)
		reattach_all(e);
	if (r < 0) {
		if (r == -EBUSY)
			log_error("engine: %s is in use by another dsnap process", state_dir);
		ds_engine_close(e);
		return r;
	}
	*out = e;
	return 0;
}

void ds_engine_cancel_copies(struct ds_engine *e)
{
	pthread_mutex_lock(&e->lock);
	e->stopping = true;
	for (struct job *j = e->jobs; j; j = j->next)
		atomic_store(&j->cancel, true);
	pthread_mutex_unlock(&e->lock);
}

void ds_engine_close(struct ds_engine *e)
{
	if (!e)
		return;
	/* Stop copies; each records itself failed before it ends. The
	 * runners take what is queued (cancelled, it ends at once). */
	pthread_mutex_lock(&e->lock);
	for (struct job *j = e->jobs; j; j = j->next)
		atomic_store(&j->cancel, true);
	e->closing = true;
	pthread_cond_broadcast(&e->queue_cond);
	pthread_mutex_unlock(&e->lock);
	for (int i = 0; i < e->nrunners; i++)
		pthread_join(e->runners[i], NULL);
	pthread_mutex_lock(&e->lock);
	while (e->jobs) {
		struct job *j = e->jobs;
		pthread_mutex_unlock(&e->lock);
		if (j->own_thread)
			pthread_join(j->thread, NULL);
		pthread_mutex_lock(&e->lock);
		e->jobs = j->next;
		free(j);
	}
	pthread_mutex_unlock(&e->lock);
	/* Attached snapshots are not attached again. One still mounted keeps
	 * its loop device, whose reads fail from now on; the next attach of
	 * the snapshot cleans it up. */
	while (e->snaps) {
		struct snap_attached *a = e->snaps;
		e->snaps = a->next;
		view_close(a->v);
		if (frontend_detach(a->f, false) < 0)
			log_warn("engine: snapshot %s is still mounted from %s; its reads fail",
				 a->snap_id, frontend_device(a->f));
		else
			view_unref(a->v);
		free(a);
	}
	/* Attached disks stay In_use and are attached again at the next start.
	 * One whose device is mounted cannot be detached: its I/O fails until
	 * then, and the next start cleans up the dead mount and loop device. */
	while (e->attached) {
		struct attached *a = e->attached;
		e->attached = a->next;
		if (frontend_detach(a->f, false) < 0) {
			/* Its bitmap stays dirty (untrusted) and its overlay is
			 * merged at the next start. */
			log_warn("engine: disk %s is still mounted on %s; its I/O fails until dsnap "
				 "starts again", a->disk_id, frontend_device(a->f));
			continue;
		}
		close_tracker(e, a);
		log_info("engine: disk %s detached for the stop", a->disk_id);
		free(a);
	}
	ds_store_close(e->store);
	catalog_close(e->cat);
	if (e->lock_fd >= 0)
		close(e->lock_fd);
	pthread_mutex_destroy(&e->lock);
	pthread_cond_destroy(&e->changed);
	pthread_cond_destroy(&e->queue_cond);
	pthread_rwlock_destroy(&e->gc_lock);
	free(e->runners);
	free(e);
}

struct ds_store *ds_engine_store(struct ds_engine *e)
{
	return e->store;
}

int ds_engine_max_copies(const struct ds_engine *e)
{
	return e->max_copies;
}

static struct job *job_for_disk(struct ds_engine *e, const char *disk_id)
{
	for (struct job *j = e->jobs; j; j = j->next)
		if (!j->finished && strcmp(j->disk_id, disk_id) == 0)
			return j;
	return NULL;
}

static int jobs_for_disk(struct ds_engine *e, const char *disk_id)
{
	int n = 0;

	/* A live disk's copy counts until it is recorded; its merge, which
	 * may still run, is waited for by the next cow_start. */
	for (struct job *j = e->jobs; j; j = j->next)
		n += !j->recorded && strcmp(j->disk_id, disk_id) == 0;
	return n;
}

static struct job *job_for_snapshot(struct ds_engine *e, const char *snap_id)
{
	for (struct job *j = e->jobs; j; j = j->next)
		if (strcmp(j->snap_id, snap_id) == 0)
			return j;
	return NULL;
}

/* Frees finished jobs whose threads are done. Caller holds lock. */
static void reap_jobs(struct ds_engine *e)
{
	for (struct job **pj = &e->jobs; *pj;) {
		struct job *j = *pj;
		/* Never waits under the lock: a thread that has just set
		 * finished is still exiting; it is joined at a later call. */
		if (j->finished && (!j->own_thread || pthread_tryjoin_np(j->thread, NULL) == 0)) {
			*pj = j->next;
			free(j);
		} else {
			pj = &j->next;
		}
	}
}

/* ---- disks ------------------------------------------------------------------ */

/* The file name of path, cut to fit a disk name. */
static void default_name(const char *path, char *out, size_t size)
{
	const char *b = strrchr(path, '/');

	b = b ? b + 1 : path;
	size_t n = MIN(strlen(b), size - 1);
	memcpy(out, b, n);
	out[n] = '\0';
}

/*
 * The disk is registered already (same identity). When its recorded path no
 * longer leads to it (the image was renamed), the path given now does:
 * record that. Caller holds lock. Always ends -EEXIST (or an error).
 */
static int adopt_known(struct ds_engine *e, const char *id, const struct disk_row *probed)
{
	struct disk_row *old = malloc(sizeof(*old));
	int r = old ? catalog_disk_get(e->cat, id, old) : -ENOMEM;

	if (r == 0 && disk_resolve(old) < 0) {
		log_info("engine: disk %s moved from %s to %s", id, old->info.path,
			 probed->info.path);
		snprintf(old->info.path, sizeof(old->info.path), "%s", probed->info.path);
		old->info.size = probed->info.size;
		r = catalog_disk_update(e->cat, old);
	}
	free(old);
	return r < 0 ? r : -EEXIST;
}

int ds_disk_register(struct ds_engine *e, const char *path, const char *name,
		     char id_out[DS_ID_SIZE])
{
	struct disk_row *d = calloc(1, sizeof(*d));
	int r;

	if (!d)
		return -ENOMEM;
	if (name && strlen(name) >= sizeof(d->info.name)) {
		free(d);
		return -EINVAL;
	}
	r = disk_probe(path, d);
	pthread_mutex_lock(&e->lock);
	if (r == 0) {
		r = catalog_disk_find_key(e->cat, &d->key, id_out);
		if (r == 0)
			r = adopt_known(e, id_out, d);
		else if (r == -ENOENT)
			r = disk_new_id("d-", d->info.id);
	}
	if (r == 0) {
		if (name && *name)
			snprintf(d->info.name, sizeof(d->info.name), "%s", name);
		else
			default_name(d->info.path, d->info.name, sizeof(d->info.name));
		d->info.created = now_s();
		r = catalog_disk_insert(e->cat, d);
		if (r == 0)
			snprintf(id_out, DS_ID_SIZE, "%s", d->info.id);
	}
	pthread_mutex_unlock(&e->lock);
	free(d);
	return r;
}

/*
 * A new image disk in STATE/disks/: made with O_EXCL, filled by fill(fd),
 * probed and recorded as owned by dsnap; removed again on any failure.
 */
static int new_image_disk(struct ds_engine *e, const char *name, int (*fill)(int fd, void *ctx),
			  void *ctx, char id_out[DS_ID_SIZE])
{
	char id[DS_ID_SIZE], rel[64], path[DS_PATH_MAX + 64];
	struct disk_row *d = NULL;
	int fd, r;

	if (name && strlen(name) >= DS_NAME_MAX)
		return -EINVAL;
	r = disk_new_id("d-", id);
	if (r < 0)
		return r;
	snprintf(rel, sizeof(rel), "disks/%s.img", id);
	r = path_in(e, rel, path, sizeof(path));
	if (r < 0)
		return r;
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	r = fill(fd, ctx);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	close(fd);
	d = r == 0 ? calloc(1, sizeof(*d)) : NULL;
	if (r == 0 && !d)
		r = -ENOMEM;
	if (r == 0)
		r = disk_probe(path, d);
	if (r == 0) {
		snprintf(d->info.id, sizeof(d->info.id), "%s", id);
		snprintf(d->info.name, sizeof(d->info.name), "%s", name && *name ? name : id);
		d->info.owned = true;
		d->info.created = now_s();
		pthread_mutex_lock(&e->lock);
		r = catalog_disk_insert(e->cat, d);
		pthread_mutex_unlock(&e->lock);
	}
	if (r < 0)
		unlink(path);
	else
		snprintf(id_out, DS_ID_SIZE, "%s", id);
	free(d);
	return r;
}

static int fill_sparse(int fd, void *ctx)
{
	return ftruncate(fd, (off_t)*(uint64_t *)ctx) < 0 ? -errno : 0;
}

int ds_disk_create(struct ds_engine *e, uint64_t size, const char *name, char id_out[DS_ID_SIZE])
{
	if (size == 0 || size > (uint64_t)INT64_MAX)
		return -EINVAL;
	return new_image_disk(e, name, fill_sparse, &size, id_out);
}

static int snapshot_root(struct ds_engine *e, const char *id, struct ds_snapshot_info *s);

struct fill_snapshot_ctx {
	struct ds_engine *e;
	const ds_chunk_id *root;
	struct view *view; /* a snapshot still being copied */
};

static int snapshot_source(struct ds_engine *e, const char *id, struct ds_snapshot_info *s,
			   struct view **v);
static struct snap_attached *find_snap(struct ds_engine *e, const char *id);

static int fill_snapshot(int fd, void *ctx)
{
	struct fill_snapshot_ctx *c = ctx;
	int r;

	pthread_rwlock_rdlock(&c->e->gc_lock);
	r = c->view ? view_export(c->view, fd) : ds_image_restore(c->e->store, c->root, fd, NULL, NULL);
	pthread_rwlock_unlock(&c->e->gc_lock);
	return r;
}

int ds_disk_create_from_snapshot(struct ds_engine *e, const char *snapshot_id, const char *name,
				 char id_out[DS_ID_SIZE])
{
	struct ds_snapshot_info s;
	struct fill_snapshot_ctx c = {e, &s.manifest, NULL};
	int r = snapshot_source(e, snapshot_id, &s, &c.view); /* instant access */

	if (r == 0)
		r = new_image_disk(e, name, fill_snapshot, &c, id_out);
	view_unref(c.view);
	return r;
}

/* Loads a disk row (under the lock), re-finds the disk on the host (outside
 * it: a loop scan or a blkid probe may take a while) and records a new
 * path or size. Returns 0 (row->info.present says whether it was found). */
static int disk_load(struct ds_engine *e, const char *id, struct disk_row *d)
{
	char old_path[DS_PATH_MAX];
	uint64_t old_size;
	int r;

	pthread_mutex_lock(&e->lock);
	r = catalog_disk_get(e->cat, id, d);
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		return r;
	snprintf(old_path, sizeof(old_path), "%s", d->info.path);
	old_size = d->info.size;
	d->info.present = disk_resolve(d) == 0;
	if (d->info.present && (strcmp(old_path, d->info.path) != 0 || old_size != d->info.size)) {
		struct disk_row *cur = malloc(sizeof(*cur));
		if (strcmp(old_path, d->info.path) != 0)
			log_info("engine: disk %s is now %s (was %s)", id, d->info.path, old_path);
		pthread_mutex_lock(&e->lock);
		/* Only the location changes: status and flags stay as they are now. */
		if (cur && catalog_disk_get(e->cat, id, cur) == 0) {
			snprintf(cur->info.path, sizeof(cur->info.path), "%s", d->info.path);
			cur->info.size = d->info.size;
			catalog_disk_update(e->cat, cur);
		}
		pthread_mutex_unlock(&e->lock);
		free(cur);
	}
	return 0;
}

static struct attached *find_attached(struct ds_engine *e, const char *id)
{
	for (struct attached *a = e->attached; a; a = a->next)
		if (strcmp(a->disk_id, id) == 0)
			return a;
	return NULL;
}

bool ds_disk_is_attached(struct ds_engine *e, const char *id)
{
	bool yes;

	pthread_mutex_lock(&e->lock);
	yes = find_attached(e, id) != NULL;
	pthread_mutex_unlock(&e->lock);
	return yes;
}

int ds_disk_get(struct ds_engine *e, const char *id, struct ds_disk_info *info)
{
	struct disk_row *d = malloc(sizeof(*d));
	struct attached *a;
	int r;

	if (!d)
		return -ENOMEM;
	r = disk_load(e, id, d);
	if (r == 0) {
		*info = d->info;
		pthread_mutex_lock(&e->lock);
		a = find_attached(e, id);
		if (a) {
			snprintf(info->device, sizeof(info->device), "%s", frontend_device(a->f));
			snprintf(info->transport, sizeof(info->transport), "%s",
				 frontend_transport_name(a->f));
		}
		pthread_mutex_unlock(&e->lock);
	}
	free(d);
	return r;
}

struct list_ctx {
	ds_disk_fn fn;
	void *opaque;
	char (*ids)[DS_ID_SIZE];
	size_t n, cap;
};

static int collect_disk(const struct disk_row *d, void *opaque)
{
	struct list_ctx *c = opaque;

	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 16;
		char(*v)[DS_ID_SIZE] = realloc(c->ids, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		c->ids = v;
		c->cap = cap;
	}
	snprintf(c->ids[c->n++], DS_ID_SIZE, "%s", d->info.id);
	return 0;
}

int ds_disk_list(struct ds_engine *e, ds_disk_fn fn, void *opaque)
{
	struct list_ctx c = {.fn = fn, .opaque = opaque};
	struct ds_disk_info *info = malloc(sizeof(*info));
	int r;

	if (!info)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	r = catalog_disk_each(e->cat, collect_disk, &c);
	pthread_mutex_unlock(&e->lock);
	for (size_t i = 0; r == 0 && i < c.n; i++) {
		int g = ds_disk_get(e, c.ids[i], info);
		if (g == 0)
			r = fn(info, opaque);
		else if (g != -ENOENT)
			r = g;
	}
	free(c.ids);
	free(info);
	return r;
}

int ds_disk_delete(struct ds_engine *e, const char *id)
{
	struct disk_row *d = malloc(sizeof(*d));
	int r;

	if (!d)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	r = catalog_disk_get(e->cat, id, d);
	if (r == 0 && job_for_disk(e, id))
		r = -EBUSY;
	if (r == 0 && strcmp(d->info.status, "Available") != 0)
		r = -EBUSY;
	if (r == 0 && d->info.locked)
		r = -ENOLCK;
	if (r == 0)
		r = catalog_disk_delete(e->cat, id);
	pthread_mutex_unlock(&e->lock);
	if (r == 0 && d->info.owned && unlink(d->info.path) < 0 && errno != ENOENT)
		log_warn("engine: cannot remove %s: %s", d->info.path, strerror(errno));
	if (r == 0) {
		char path[DS_PATH_MAX + 64];
		disk_file(e, "overlay", id, path, sizeof(path));
		cow_remove(path);
		disk_file(e, "cbt", id, path, sizeof(path));
		unlink(path);
	}
	free(d);
	return r;
}

int ds_disk_set_locked(struct ds_engine *e, const char *id, bool locked)
{
	return disk_update(e, id, NULL, locked);
}

/* ---- snapshots --------------------------------------------------------------- */

static void job_progress(uint64_t done, uint64_t total, void *opaque)
{
	struct job *j = opaque;

	atomic_store(&j->progress, total ? (int)(done * 100 / total) : 100);
}

static bool job_pit_intact(void *opaque)
{
	struct job *j = opaque;

	return j->cow ? !cow_failed(j->cow) : disk_pit_intact(&j->pit);
}

/* A live disk's slab was read: the tracker lets its writes through, and
 * the copier's priority follows the overlay and its own rate. */
static _Thread_local bool worker_fast;

/* The copy's rate while the disk's users are busy: the busy rate, or the
 * cap when that is lower. */
static uint64_t busy_limit(const struct ds_engine *e)
{
	uint64_t cap = e->copy_max_rate;

	return cap ? MIN(cap, e->copy_busy_rate) : e->copy_busy_rate;
}

/* The disk's users' requests per second, over the last window. */
static uint64_t foreground_rate(struct job *j, uint64_t now_ns)
{
	uint64_t last = atomic_load(&j->fg_ns), reqs = cow_requests(j->cow);

	if (now_ns - last >= FG_WINDOW_NS && atomic_compare_exchange_strong(&j->fg_ns, &last, now_ns)) {
		uint64_t before = atomic_exchange(&j->fg_requests, reqs);
		atomic_store(&j->fg_rate, last ? (reqs - before) * 1000000000ull / (now_ns - last) : 0);
	}
	return atomic_load(&j->fg_rate);
}

static void job_read_done(void *opaque, uint64_t first, uint64_t n)
{
	struct job *j = opaque;
	struct cow_stats st;
	struct timespec now;
	uint64_t now_ns, elapsed_ns, limit, busy = j->e->copy_busy_rate;
	bool fast;

	cow_copied(j->cow, first, n);
	cow_get_stats(j->cow, &st);
	clock_gettime(CLOCK_MONOTONIC, &now);
	now_ns = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
	elapsed_ns = now_ns - ((uint64_t)j->started.tv_sec * 1000000000ull +
			      (uint64_t)j->started.tv_nsec);
	limit = MAX(OVERLAY_SOFT_LIMIT(j->cj.m->disk_size), st.log_ready);
	fast = st.overlay_bytes > limit ||
	       (elapsed_ns > 2000000000ull &&
		(double)atomic_load(&j->cj.bytes_read) < (double)elapsed_ns / 1e9 * (double)(busy / 2));
	atomic_store(&j->ioprio, fast ? DS_IOPRIO_BE : DS_IOPRIO_IDLE);
	/* While the disk's users are busy, the copy reads at the busy rate at
	 * most; idle, it runs free. Idle priority alone does not hold it back
	 * on a device whose queue is deeper than the users' (the scheduler
	 * dispatches everything at once): a copier at 500 MB/s halves the
	 * users' IOPS, and at 64 MiB/s random writers still lost about a
	 * tenth, at 16 nothing measurable (COPY_BUSY_RATE_DEFAULT). An
	 * overlay past its limit lets it run free too. */
	{
		bool yield = foreground_rate(j, now_ns) >= FG_BUSY &&
			     st.overlay_bytes <= limit;
		atomic_store(&j->cj.max_rate, yield ? busy_limit(j->e) : j->e->copy_max_rate);
	}
	if (fast != worker_fast) {
		/* CPU too: an idle-class copier may get none under load. Each
		 * copier worker starts SCHED_IDLE (copier_job.idle_cpu). */
		struct sched_param sp = {0};
		pthread_setschedparam(pthread_self(), fast ? SCHED_OTHER : SCHED_IDLE, &sp);
		worker_fast = fast;
	}
}

static const char *copy_error(int r)
{
	switch (r) {
	case -ECANCELED:
		return "stopped: dsnap shut down during the copy";
	case -ESTALE:
		return "the image was opened for writing during the copy";
	case -ENOBUFS:
		return "the overlay could not grow: no space in the state folder";
	case -EUCLEAN:
		return "changed-block tracking missed a change; the next snapshot reads the whole disk";
	case -ENOSPC:
		return "the store is full";
	case -EIO:
		return "read error, or the disk shrank during the copy";
	default:
		return strerror(-r);
	}
}

/*
 * The point in time of an attached disk: the tracker starts keeping it
 * (cow_start); the copier reads the base. The snapshot the changed-block
 * bitmap counts from, when there is one, makes this copy incremental.
 */
static int live_pit_take(struct attached *a, struct job *j)
{
	int r;

	j->changed = calloc((size_t)(cow_nchunks(a->cow) + 63) / 64 + 1, sizeof(uint64_t));
	if (!j->changed)
		return -ENOMEM;
	j->pit.fd = open(a->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (j->pit.fd < 0)
		j->pit.fd = open(a->path, O_RDONLY | O_CLOEXEC);
	if (j->pit.fd < 0)
		return errno == ENOENT ? -ENODEV : -errno;
	j->pit.size = cow_size(a->cow);
	r = cow_start(a->cow, j->changed, j->since, &j->gen);
	if (r == -EBUSY)
		return -EALREADY; /* the last snapshot's merge still runs */
	if (r == 0)
		j->cow = a->cow;
	return r;
}

/* The snapshot the changed-block bitmap counts from: its manifest makes
 * the copy incremental. Caller holds gc_lock. */
static void load_prev(struct ds_engine *e, struct job *j)
{
	struct ds_snapshot_info *prev = malloc(sizeof(*prev));

	if (prev && snapshot_root(e, j->since, prev) == 0 &&
	    ds_manifest_load(e->store, &prev->manifest, &j->prev) == 0 &&
	    (j->prev->disk_size != j->cj.m->disk_size || j->prev->chunk_size != j->cj.m->chunk_size)) {
		ds_manifest_free(j->prev);
		j->prev = NULL;
	}
	free(prev);
	if (!j->prev)
		return;
	j->cj.prev = j->prev;
	j->cj.changed = j->changed;
	view_set_incremental(j->view);
	j->cj.audit_every = AUDIT_EVERY;
	/* A few scattered chunks per slab: the copy waits on reads, not the
	 * CPUs, so more slabs are kept in flight (the copier packs the wanted
	 * chunks in its buffers and does not register them, so the extra
	 * workers touch little memory). */
	j->cj.workers = (unsigned)MAX(1L, sysconf(_SC_NPROCESSORS_ONLN)) * INCR_WORKERS_PER_CPU;
	j->cj.audit_seed = (unsigned)now_s();
}

/*
 * Requests first: while a runner reads, hashes and stores, its thread runs
 * at a lower CPU priority (nice is per thread on Linux), and at the normal
 * one again before it takes the engine lock to record the end, or a
 * request waiting for that lock would wait for a thread that gets little
 * CPU. Going back needs CAP_SYS_NICE (or RLIMIT_NICE); without it copies
 * run at the normal priority throughout.
 */
static void background(bool on)
{
	static int can = -1;

	if (can < 0) {
		struct rlimit rl;
		can = geteuid() == 0 || (getrlimit(RLIMIT_NICE, &rl) == 0 && rl.rlim_cur >= 20);
	}
	if (can)
		setpriority(PRIO_PROCESS, (id_t)gettid(), on ? RUNNER_NICE : 0);
}

/* A copy, from its point in time to its end in the catalog. */
static void copy_run(struct job *j, bool nice)
{
	struct ds_engine *e = j->e;
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	ds_chunk_id root;
	int r;

	pthread_rwlock_rdlock(&e->gc_lock);
	/* Under gc_lock: the previous snapshot's chunks stay while they are
	 * reused. Gone or unusable, the copy reads the whole disk. */
	if (j->cow && j->since[0])
		load_prev(e, j);
	clock_gettime(CLOCK_MONOTONIC, &j->started);
	if (j->cow) {
		/* The users' rate is measured over FG_WINDOW_NS from here on;
		 * until then the copy reads as if they were busy (it used to
		 * run free for its first slabs: a burst the users felt). */
		atomic_store(&j->fg_ns, (uint64_t)j->started.tv_sec * 1000000000ull +
						(uint64_t)j->started.tv_nsec);
		atomic_store(&j->fg_requests, cow_requests(j->cow));
		atomic_store(&j->cj.max_rate, busy_limit(e));
	}
	if (nice)
		background(true);
	r = copier_backup(&j->cj);
	if (r == 0 && j->cj.prev && atomic_load(&j->cj.audit_mismatch)) {
		/* An unchanged chunk changed: the bitmap cannot be trusted, and
		 * the copied chunks have been let go: this point in time is lost. */
		log_warn("engine: changed-block tracking of %s is wrong (%llu of %llu audited "
			 "chunks differ); snapshot %s fails, the next one reads the whole disk",
			 j->disk_id, (unsigned long long)atomic_load(&j->cj.audit_mismatch),
			 (unsigned long long)atomic_load(&j->cj.audited), j->snap_id);
		cow_distrust(j->cow);
		r = -EUCLEAN;
	}
	if (r == 0)
		r = ds_manifest_save(e->store, j->cj.m, &root);
	/* A live disk's point in time is lost only when its overlay filled. */
	if (j->cow && cow_failed(j->cow) && (r == 0 || r == -ESTALE))
		r = -ENOBUFS;
	else if (r == 0 && !job_pit_intact(j))
		r = -ESTALE;
	/* Readers of the point in time leave the copy's source before it goes. */
	view_end(j->view, r == 0);
	if (j->cow)
		cow_copy_end(j->cow, r == 0, j->changed, j->snap_id);
	disk_pit_release(&j->pit);
	j->cj.m = NULL; /* the view's */
	if (nice)
		background(false);

	pthread_mutex_lock(&e->lock);
	if (!s)
		log_error("engine: no memory to record the end of snapshot %s; it is failed at "
			  "the next start", j->snap_id);
	if (s && catalog_snapshot_get(e->cat, j->snap_id, s) == 0) {
		s->modified = now_s();
		s->bytes_read = atomic_load(&j->cj.bytes_read);
		s->stored_bytes = atomic_load(&j->cj.bytes_stored);
		if (r == 0) {
			struct timespec t;
			clock_gettime(CLOCK_MONOTONIC, &t);
			log_info("engine: snapshot %s of %s accomplished: %s copy, %llu bytes read, "
				 "%llu stored, in %.3f s", j->snap_id, j->disk_id,
				 j->cj.prev ? "incremental" : "full",
				 (unsigned long long)s->bytes_read, (unsigned long long)s->stored_bytes,
				 (double)(t.tv_sec - j->started.tv_sec) +
					 (double)(t.tv_nsec - j->started.tv_nsec) / 1e9);
			snprintf(s->status, sizeof(s->status), "accomplished");
			s->progress = 100;
			s->manifest = root;
			s->has_manifest = true;
		} else {
			snprintf(s->status, sizeof(s->status), "failed");
			s->progress = atomic_load(&j->progress);
			snprintf(s->error, sizeof(s->error), "%s", copy_error(r));
			log_warn("engine: snapshot %s of %s failed: %s", j->snap_id, j->disk_id,
				 s->error);
		}
		if (catalog_snapshot_update(e->cat, s) < 0)
			log_error("engine: cannot record the end of snapshot %s", j->snap_id);
	}
	free(s);
	/* What a copy ends with is kept through a power failure: a snapshot
	 * shown accomplished stays so. The job shows it progressing until the
	 * commit is synced, which is done without the lock. */
	pthread_mutex_unlock(&e->lock);
	{
		int sr = catalog_sync(e->cat);
		if (sr < 0)
			log_error("engine: cannot sync the catalog: %s", strerror(-sr));
		sr = catalog_checkpoint(e->cat);
		if (sr < 0)
			log_warn("engine: catalog checkpoint failed: %s", strerror(-sr));
	}
	pthread_mutex_lock(&e->lock);
	j->err = r;
	j->recorded = true;
	view_unref(j->view); /* later readers load the manifest from the catalog */
	j->view = NULL;
	pthread_cond_broadcast(&e->changed);
	if (j->cow) {
		struct attached *a = find_attached(e, j->disk_id);
		/* The disk's next snapshot waits for this one's merge. */
		pthread_mutex_unlock(&e->lock);
		cow_wait_merged(j->cow, j->gen);
		{
			struct cow_stats st;
			cow_get_stats(j->cow, &st);
			log_info("engine: snapshot %s of %s: overlay peak %llu KiB, %llu KiB merged "
				 "back", j->snap_id, j->disk_id,
				 (unsigned long long)(st.overlay_peak >> 10),
				 (unsigned long long)(st.merged_bytes >> 10));
		}
		pthread_mutex_lock(&e->lock);
		if (a)
			a->users--;
	}
	ds_manifest_free(j->prev);
	j->prev = NULL;
	j->finished = true;
	pthread_cond_broadcast(&e->changed);
	pthread_mutex_unlock(&e->lock);
	pthread_rwlock_unlock(&e->gc_lock);
}

static void *copy_thread(void *arg)
{
	copy_run(arg, false);
	return NULL;
}

/* Runs queued copies one after the other until the engine closes. At most
 * max_running run at once: more would only share the CPUs and the disk
 * (and each holds its buffers); a runner thread costs its creation once. */
static void *runner(void *arg)
{
	struct ds_engine *e = arg;

	pthread_mutex_lock(&e->lock);
	for (;;) {
		struct job *j = e->queue_head;
		if (!j) {
			if (e->closing)
				break;
			pthread_cond_wait(&e->queue_cond, &e->lock);
			continue;
		}
		e->queue_head = j->queued;
		if (!e->queue_head)
			e->queue_tail = &e->queue_head;
		pthread_mutex_unlock(&e->lock);
		copy_run(j, true);
		pthread_mutex_lock(&e->lock);
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

/* Starts a copy: its own thread for a live disk, else the runners' queue
 * (runners are started as copies come, up to max_running, and stay).
 * Caller holds lock. */
static int copy_start(struct ds_engine *e, struct job *j)
{
	if (j->cow) {
		if (pthread_create(&j->thread, NULL, copy_thread, j) != 0)
			return -EAGAIN;
		j->own_thread = true;
		return 0;
	}
	if (e->nrunners < e->max_running &&
	    pthread_create(&e->runners[e->nrunners], NULL, runner, e) == 0)
		e->nrunners++;
	if (e->nrunners == 0)
		return -EAGAIN;
	j->queued = NULL;
	*e->queue_tail = j;
	e->queue_tail = &j->queued;
	pthread_cond_signal(&e->queue_cond);
	return 0;
}

int ds_snapshot_create(struct ds_engine *e, const char *disk_id,
		       const struct ds_snapshot_params *p, char id_out[DS_ID_SIZE])
{
	struct disk_row *d = malloc(sizeof(*d));
	struct ds_snapshot_info *s = calloc(1, sizeof(*s));
	struct job *j = calloc(1, sizeof(*j));
	struct attached *a = NULL;
	int r = 0;

	if (!d || !s || !j) {
		r = -ENOMEM;
		goto out_free;
	}
	if ((p->name && strlen(p->name) >= sizeof(s->name)) ||
	    (p->description && strlen(p->description) >= sizeof(s->description)) ||
	    (p->category && strlen(p->category) >= sizeof(s->category)) ||
	    (p->resource_group && strlen(p->resource_group) >= sizeof(s->resource_group)) ||
	    p->retention_days < 0 || p->ntags < 0 || p->ntags > DS_MAX_TAGS) {
		r = -EINVAL;
		goto out_free;
	}
	j->pit.fd = -1;
	/* Checks under the lock; the slow part (finding the disk, cloning or
	 * leasing it) outside it; then the checks again before recording. */
	pthread_mutex_lock(&e->lock);
	reap_jobs(e);
	r = e->stopping ? -ECANCELED : catalog_disk_get(e->cat, disk_id, d);
	if (r == 0 && d->info.locked)
		r = -ENOLCK;
	if (r == 0 && strcmp(d->info.status, "In_use") == 0)
		a = find_attached(e, disk_id);
	if (r == 0 && strcmp(d->info.status, "Available") != 0 && (!a || a->detaching))
		r = -EBUSY;
	if (r == 0 && jobs_for_disk(e, disk_id) >= e->max_copies)
		r = e->max_copies > 1 ? -EUSERS : -EALREADY;
	if (r == 0 && p->resource_group && *p->resource_group &&
	    catalog_rg_get(e->cat, p->resource_group, NULL, 0, NULL) < 0)
		r = -ENXIO;
	if (r == 0 && !p->automatic) {
		int manual = catalog_count_manual(e->cat, disk_id);
		r = manual < 0 ? manual : manual >= DS_MAX_MANUAL_SNAPSHOTS ? -EDQUOT : 0;
	}
	if (r == 0 && a)
		a->users++;
	else
		a = NULL;
	pthread_mutex_unlock(&e->lock);
	/* The point in time: from here the copy reads what the disk was now. */
	if (r == 0 && a)
		r = live_pit_take(a, j);
	else if (r == 0 && d->info.kind != DS_DISK_FILE && disk_resolve(d) < 0)
		r = -ENODEV; /* a file's identity is checked on the descriptor the copy reads */
	else if (r == 0)
		r = disk_pit_take(d, &j->pit);
	pthread_mutex_lock(&e->lock);
	if (r == 0 && (e->stopping || jobs_for_disk(e, disk_id) >= e->max_copies))
		r = e->stopping ? -ECANCELED : e->max_copies > 1 ? -EUSERS : -EALREADY;
	if (r == 0)
		r = disk_new_id("s-", s->id);
	if (r == 0) {
		snprintf(s->disk_id, sizeof(s->disk_id), "%s", disk_id);
		snprintf(s->name, sizeof(s->name), "%s", p->name ? p->name : "");
		snprintf(s->description, sizeof(s->description), "%s",
			 p->description ? p->description : "");
		snprintf(s->status, sizeof(s->status), "progressing");
		s->disk_size = j->pit.size;
		s->created = s->modified = now_s();
		s->retention_days = p->retention_days;
		s->automatic = p->automatic;
		snprintf(s->category, sizeof(s->category), "%s",
			 p->category ? p->category : "Standard");
		s->instant_access = p->instant_access;
		s->ia_retention_days = p->ia_retention_days;
		snprintf(s->resource_group, sizeof(s->resource_group), "%s",
			 p->resource_group ? p->resource_group : "");
		s->ntags = p->ntags;
		for (int i = 0; i < p->ntags; i++)
			s->tags[i] = p->tags[i];
		r = catalog_begin(e->cat);
		if (r == 0)
			r = catalog_snapshot_insert(e->cat, s);
		if (r == 0)
			r = catalog_commit(e->cat);
		else
			catalog_rollback(e->cat);
	}
	if (r == 0) {
		j->e = e;
		snprintf(j->snap_id, sizeof(j->snap_id), "%s", s->id);
		snprintf(j->disk_id, sizeof(j->disk_id), "%s", disk_id);
		j->cj.s = e->store;
		j->cj.fd = j->pit.fd;
		j->cj.m = ds_manifest_new(ds_store_chunk_size(e->store), j->pit.size);
		j->cj.seek_holes = d->info.kind == DS_DISK_FILE;
		j->cj.cancel = &j->cancel;
		j->cj.still_valid = job_pit_intact;
		j->cj.progress = job_progress;
		j->cj.opaque = j;
		atomic_store(&j->cj.max_rate, e->copy_max_rate);
		if (j->cow) {
			j->cj.read_done = job_read_done;
			j->cj.ioprio = &j->ioprio;
			atomic_store(&j->ioprio, DS_IOPRIO_IDLE);
			j->cj.idle_cpu = true;
		}
		j->view = j->cj.m ? view_new(e->store, j->cj.m, j->cow, &j->pit) : NULL;
		if (!j->view) {
			ds_manifest_free(j->cj.m);
			r = -ENOMEM;
		} else {
			r = copy_start(e, j);
		}
		if (r < 0) {
			catalog_snapshot_delete(e->cat, s->id);
			view_unref(j->view); /* and the manifest */
		}
	}
	if (r == 0) {
		j->next = e->jobs;
		e->jobs = j;
		snprintf(id_out, DS_ID_SIZE, "%s", s->id);
		j = NULL;
	}
	if (j && a)
		a->users--; /* not taken: the disk may be detached again */
	pthread_mutex_unlock(&e->lock);
out_free:
	if (j) {
		if (j->cow)
			cow_copy_end(j->cow, false, j->changed, NULL);
		disk_pit_release(&j->pit);
		ds_manifest_free(j->prev);
		free(j->changed);
	}
	free(j);
	free(s);
	free(d);
	return r;
}

/* Overlays a running copy's progress. Caller holds lock. */
static void snapshot_live(struct ds_engine *e, struct ds_snapshot_info *s)
{
	struct job *j = job_for_snapshot(e, s->id);

	if (j && !j->recorded) {
		snprintf(s->status, sizeof(s->status), "progressing");
		s->progress = atomic_load(&j->progress);
	}
}

int ds_snapshot_get(struct ds_engine *e, const char *id, struct ds_snapshot_info *info)
{
	int r;

	pthread_mutex_lock(&e->lock);
	r = catalog_snapshot_get(e->cat, id, info);
	if (r == 0)
		snapshot_live(e, info);
	pthread_mutex_unlock(&e->lock);
	return r;
}

int ds_snapshot_wait(struct ds_engine *e, const char *id)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	struct job *j;
	int r;

	if (!s)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	while ((j = job_for_snapshot(e, id)) && !j->recorded)
		pthread_cond_wait(&e->changed, &e->lock);
	r = catalog_snapshot_get(e->cat, id, s);
	/* The copy's own error while its job is still known, else -EIO. */
	if (r == 0 && strcmp(s->status, "accomplished") != 0)
		r = j && j->err < 0 ? j->err : -EIO;
	pthread_mutex_unlock(&e->lock);
	free(s);
	return r;
}

struct snap_list_ctx {
	struct ds_engine *e;
	ds_snapshot_fn fn;
	void *opaque;
};

static int snap_list_one(const struct ds_snapshot_info *s, void *opaque)
{
	struct snap_list_ctx *c = opaque;

	/* Live progress is written into the catalog's own row buffer. */
	snapshot_live(c->e, (struct ds_snapshot_info *)s);
	return c->fn(s, c->opaque);
}

int ds_snapshot_list(struct ds_engine *e, const char *disk_id, ds_snapshot_fn fn, void *opaque)
{
	struct snap_list_ctx c = {e, fn, opaque};
	int r;

	/* fn runs with the engine locked (a record is about 21 KB: copying a
	 * thousand of them out cost more than the request). The API's only
	 * other lock is taken after this one, never before. */
	pthread_mutex_lock(&e->lock);
	r = catalog_snapshot_each(e->cat, disk_id, snap_list_one, &c);
	pthread_mutex_unlock(&e->lock);
	return r;
}

int ds_snapshot_delete(struct ds_engine *e, const char *id)
{
	struct job *j;
	int r;

	pthread_mutex_lock(&e->lock);
	reap_jobs(e);
	j = job_for_snapshot(e, id);
	r = (j && !j->recorded) || find_snap(e, id) ||
			    (e->snaps_busy && strcmp(e->snaps_busy_id, id) == 0)
		    ? -EBUSY
		    : catalog_snapshot_delete(e->cat, id);
	pthread_mutex_unlock(&e->lock);
	return r;
}

/* The manifest root of an accomplished snapshot. */
static int snapshot_root(struct ds_engine *e, const char *id, struct ds_snapshot_info *s)
{
	int r = ds_snapshot_get(e, id, s);

	if (r < 0)
		return r;
	if (strcmp(s->status, "progressing") == 0)
		return -EBUSY;
	if (!s->has_manifest)
		return -ENODATA;
	return 0;
}

int64_t ds_snapshot_verify(struct ds_engine *e, const char *id)
{
	struct ds_snapshot_info s;
	struct ds_manifest *m = NULL;
	struct ds_chunk batch[64];
	uint32_t cs = ds_store_chunk_size(e->store);
	uint8_t *buf = NULL;
	int64_t bad = 0;
	int r;

	r = snapshot_root(e, id, &s);
	if (r < 0)
		return r;
	pthread_rwlock_rdlock(&e->gc_lock);
	r = ds_manifest_load(e->store, &s.manifest, &m);
	if (r == -EBADMSG || r == -ENOENT) {
		bad = 1; /* the manifest itself is damaged */
		r = 0;
	} else if (r == 0) {
		buf = malloc((size_t)cs * ARRAY_SIZE(batch));
		r = buf ? 0 : -ENOMEM;
	}
	for (uint64_t k = 0; r == 0 && m && k < m->count;) {
		size_t n = 0;
		for (; k < m->count && n < ARRAY_SIZE(batch); k++) {
			if (ds_chunk_id_is_zero(&m->ids[k]))
				continue;
			batch[n].id = m->ids[k];
			batch[n].data = buf + n * (size_t)cs;
			n++;
		}
		int g = ds_store_get(e->store, batch, n);
		if (g == -ENOMEM || g == -EINVAL) {
			r = g; /* the batch was not read at all */
			break;
		}
		for (size_t i = 0; i < n; i++)
			bad += batch[i].err < 0;
	}
	pthread_rwlock_unlock(&e->gc_lock);
	ds_manifest_free(m);
	free(buf);
	return r < 0 ? r : bad;
}

int ds_snapshot_export(struct ds_engine *e, const char *id, const char *path)
{
	struct ds_snapshot_info s;
	struct view *v = NULL;
	int fd, r;

	r = snapshot_source(e, id, &s, &v); /* instant access: v while copied */
	if (r < 0)
		return r;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0) {
		r = -errno;
		view_unref(v);
		return r;
	}
	pthread_rwlock_rdlock(&e->gc_lock);
	r = v ? view_export(v, fd) : ds_image_restore(e->store, &s.manifest, fd, NULL, NULL);
	pthread_rwlock_unlock(&e->gc_lock);
	view_unref(v);
	close(fd);
	if (r < 0)
		unlink(path);
	return r;
}

static int set_disk_status(struct ds_engine *e, const char *id, const char *status)
{
	return disk_update(e, id, status, -1);
}

/* ---- instant access ---------------------------------------------------------- */

/* A reference to the view of a snapshot whose copy runs; -ENOENT when no
 * copy of it runs (its end is recorded: the catalog says what it is),
 * -ENODATA when the copy has just failed. */
static int running_view(struct ds_engine *e, const char *id, struct view **out)
{
	struct job *j;
	int r = -ENOENT;

	pthread_mutex_lock(&e->lock);
	j = job_for_snapshot(e, id);
	if (j && !j->recorded && j->view && view_failed(j->view)) {
		r = -ENODATA;
	} else if (j && !j->recorded && j->view) {
		view_ref(j->view);
		*out = j->view;
		r = 0;
	}
	pthread_mutex_unlock(&e->lock);
	return r;
}

/* An accomplished snapshot's manifest root in s, or (*v) the view of its
 * running copy (instant access). */
static int snapshot_source(struct ds_engine *e, const char *id, struct ds_snapshot_info *s,
			   struct view **v)
{
	int r = snapshot_root(e, id, s);

	if (r != -EBUSY)
		return r;
	r = running_view(e, id, v);
	/* Ended between the two looks: ask the catalog again. */
	return r == -ENOENT ? snapshot_root(e, id, s) : r;
}

/* The snapshot as an image: while copied, the copy's view; accomplished,
 * its manifest from the store. -ENODATA when it failed. */
static int snapshot_view(struct ds_engine *e, const char *id, struct view **out)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	struct ds_manifest *m = NULL;
	struct view *v = NULL;
	int r = s ? snapshot_source(e, id, s, &v) : -ENOMEM;

	if (r == 0 && !v) {
		r = ds_manifest_load(e->store, &s->manifest, &m);
		if (r == 0 && !(v = view_new_done(e->store, m))) {
			ds_manifest_free(m);
			r = -ENOMEM;
		}
	}
	if (r == 0)
		*out = v;
	free(s);
	return r;
}

static struct snap_attached *find_snap(struct ds_engine *e, const char *id)
{
	for (struct snap_attached *a = e->snaps; a; a = a->next)
		if (strcmp(a->snap_id, id) == 0)
			return a;
	return NULL;
}

int ds_snapshot_attach(struct ds_engine *e, const char *id, char device_out[32])
{
	char mnt[DS_PATH_MAX + 64];
	struct snap_attached *a;
	int r = 0;

	if (geteuid() != 0)
		return -EPERM;
	pthread_mutex_lock(&e->lock);
	if (e->snaps_busy)
		r = -EAGAIN;
	else if (find_snap(e, id))
		r = -EEXIST;
	else if (e->stopping)
		r = -ECANCELED;
	else
		e->snaps_busy = true; /* one attach or detach at a time */
	if (r == 0)
		snprintf(e->snaps_busy_id, sizeof(e->snaps_busy_id), "%s", id);
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		return r;
	a = calloc(1, sizeof(*a));
	r = a ? snapshot_view(e, id, &a->v) : -ENOMEM;
	if (r == 0) {
		snprintf(a->snap_id, sizeof(a->snap_id), "%s", id);
		snprintf(mnt, sizeof(mnt), "%s/mnt", e->dir);
		mkdir(mnt, 0700);
		snprintf(mnt, sizeof(mnt), "%s/mnt/%s", e->dir, id);
		frontend_cleanup_stale(mnt);
		if (mkdir(mnt, 0700) < 0 && errno != EEXIST)
			r = -errno;
	}
	if (r == 0)
		r = frontend_attach_reader(view_read, a->v, view_size(a->v), id, mnt, &a->f);
	pthread_mutex_lock(&e->lock);
	if (r == 0) {
		a->next = e->snaps;
		e->snaps = a;
		snprintf(device_out, 32, "%s", frontend_device(a->f));
		log_info("engine: snapshot %s attached read-only as %s", id, device_out);
	}
	e->snaps_busy = false;
	pthread_mutex_unlock(&e->lock);
	if (r < 0 && a) {
		view_unref(a->v);
		free(a);
	}
	return r;
}

int ds_snapshot_detach(struct ds_engine *e, const char *id)
{
	struct snap_attached *a, **pa;
	int r = 0;

	pthread_mutex_lock(&e->lock);
	a = find_snap(e, id);
	if (e->snaps_busy)
		r = -EAGAIN;
	else if (!a)
		r = -EINVAL; /* not attached */
	else
		e->snaps_busy = true;
	if (r == 0)
		snprintf(e->snaps_busy_id, sizeof(e->snaps_busy_id), "%s", id);
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		return r;
	/* Refused while mounted or held open; then stays as it was. */
	r = frontend_detach(a->f, false);
	pthread_mutex_lock(&e->lock);
	if (r == 0)
		for (pa = &e->snaps; *pa; pa = &(*pa)->next)
			if (*pa == a) {
				*pa = a->next;
				break;
			}
	e->snaps_busy = false;
	pthread_mutex_unlock(&e->lock);
	if (r == 0) {
		log_info("engine: snapshot %s detached", id);
		view_unref(a->v);
		free(a);
	}
	return r;
}


int ds_disk_reset(struct ds_engine *e, const char *disk_id, const char *snapshot_id)
{
	struct disk_row *d = malloc(sizeof(*d));
	struct ds_snapshot_info s;
	struct copier_job cj = {0};
	int fd = -1, r;

	if (!d)
		return -ENOMEM;
	r = snapshot_root(e, snapshot_id, &s);
	/* Reserve the disk (ReIniting) under the lock; find and open it
	 * outside, where a lease or a device scan may take a while. */
	pthread_mutex_lock(&e->lock);
	if (r == 0)
		r = catalog_disk_get(e->cat, disk_id, d);
	if (r == 0 && d->info.locked)
		r = -ENOLCK;
	if (r == 0 && job_for_disk(e, disk_id))
		r = -EALREADY;
	if (r == 0 && strcmp(d->info.status, "Available") != 0)
		r = -EBUSY;
	if (r == 0) {
		snprintf(d->info.status, sizeof(d->info.status), "ReIniting");
		r = catalog_disk_update(e->cat, d);
	}
	pthread_mutex_unlock(&e->lock);
	if (r < 0)
		goto out;
	if (disk_resolve(d) < 0)
		r = -ENODEV;
	if (r == 0)
		r = disk_open_for_restore(d, &fd);
	if (r < 0) {
		set_disk_status(e, disk_id, "Available");
		goto out;
	}

	{
		/* The disk changes under its changed-block bitmap: drop it. */
		char cbt[DS_PATH_MAX + 64];
		disk_file(e, "cbt", disk_id, cbt, sizeof(cbt));
		unlink(cbt);
	}
	pthread_rwlock_rdlock(&e->gc_lock);
	r = ds_manifest_load(e->store, &s.manifest, &cj.m);
	if (r == 0 && d->info.kind == DS_DISK_FILE) {
		/* The image takes the snapshot's size; zero chunks become holes. */
		if (ftruncate(fd, (off_t)cj.m->disk_size) < 0)
			r = -errno;
		cj.zeros = ZERO_PUNCH;
	} else if (r == 0) {
		if (d->info.size < cj.m->disk_size)
			r = -ENOSPC;
		cj.zeros = ZERO_WRITE;
	}
	if (r == 0) {
		cj.s = e->store;
		cj.fd = fd;
		r = copier_restore(&cj);
	}
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	pthread_rwlock_unlock(&e->gc_lock);
	ds_manifest_free(cj.m);
	if (r < 0)
		log_error("engine: reset of %s from %s failed: %s; the disk holds a partial "
			  "image, reset it again", disk_id, snapshot_id, strerror(-r));
	set_disk_status(e, disk_id, "Available");
out:
	if (fd >= 0)
		close(fd);
	free(d);
	return r;
}

/* ---- garbage collection -------------------------------------------------------- */

struct live_ctx {
	struct ds_store *store;
	ds_chunk_id *ids;
	size_t n, cap;
	int err;
};

static int collect_live(const struct ds_snapshot_info *s, void *opaque)
{
	struct live_ctx *c = opaque;
	int r;

	if (!s->has_manifest)
		return 0;
	r = ds_manifest_refs(c->store, &s->manifest, &c->ids, &c->n, &c->cap);
	/* A snapshot whose manifest cannot be read keeps GC from running:
	 * better keep garbage than drop a chunk someone may still need. */
	if (r < 0) {
		log_error("engine: snapshot %s cannot be read (%s); GC stopped", s->id,
			  strerror(-r));
		return r;
	}
	return 0;
}

int ds_engine_gc(struct ds_engine *e, struct ds_gc_stats *st)
{
	struct live_ctx c = {.store = e->store};
	int r;

	pthread_rwlock_wrlock(&e->gc_lock);
	pthread_mutex_lock(&e->lock);
	r = catalog_snapshot_each(e->cat, NULL, collect_live, &c);
	pthread_mutex_unlock(&e->lock);
	if (r == 0)
		r = ds_store_gc(e->store, c.ids, c.n, st);
	pthread_rwlock_unlock(&e->gc_lock);
	free(c.ids);
	return r;
}

/* ---- attributes, usage, retention ------------------------------------------------ */

int ds_snapshot_modify(struct ds_engine *e, const char *id, const char *name,
		       const char *description, int retention_days)
{
	struct ds_snapshot_info *s = malloc(sizeof(*s));
	int r;

	if (!s)
		return -ENOMEM;
	if ((name && strlen(name) >= sizeof(s->name)) ||
	    (description && strlen(description) >= sizeof(s->description)) || retention_days < -1) {
		free(s);
		return -EINVAL;
	}
	pthread_mutex_lock(&e->lock);
	r = catalog_snapshot_get(e->cat, id, s);
	if (r == 0) {
		if (name)
			snprintf(s->name, sizeof(s->name), "%s", name);
		if (description)
			snprintf(s->description, sizeof(s->description), "%s", description);
		if (retention_days >= 0)
			s->retention_days = retention_days;
		s->modified = now_s();
		r = catalog_snapshot_update(e->cat, s);
	}
	pthread_mutex_unlock(&e->lock);
	free(s);
	return r;
}

static int count_one(const struct ds_snapshot_info *s, void *opaque)
{
	(*(uint64_t *)opaque)++;
	return 0;
}

int ds_snapshot_usage(struct ds_engine *e, uint64_t *count, uint64_t *stored_bytes)
{
	struct ds_store_stats st;
	int r;

	*count = 0;
	pthread_mutex_lock(&e->lock);
	r = catalog_snapshot_each(e->cat, NULL, count_one, count);
	pthread_mutex_unlock(&e->lock);
	if (r == 0)
		r = ds_store_stats(e->store, &st);
	if (r == 0)
		*stored_bytes = st.stored_bytes;
	return r;
}

struct expire_ctx {
	int64_t now;
	char (*ids)[DS_ID_SIZE];
	size_t n, cap;
};

static int find_expired(const struct ds_snapshot_info *s, void *opaque)
{
	struct expire_ctx *c = opaque;

	if (s->retention_days <= 0 || strcmp(s->status, "progressing") == 0 ||
	    s->created + (int64_t)s->retention_days * 86400 > c->now)
		return 0;
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 16;
		char(*v)[DS_ID_SIZE] = realloc(c->ids, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		c->ids = v;
		c->cap = cap;
	}
	snprintf(c->ids[c->n++], DS_ID_SIZE, "%s", s->id);
	return 0;
}

int ds_engine_expire(struct ds_engine *e, int64_t now, int *released)
{
	struct expire_ctx c = {.now = now};
	int r, n = 0;

	/* The maintenance pass keeps the catalog's WAL short when no copy
	 * ends to do it. */
	r = catalog_checkpoint(e->cat);
	if (r < 0)
		log_warn("engine: catalog checkpoint failed: %s", strerror(-r));
	pthread_mutex_lock(&e->lock);
	r = catalog_snapshot_each(e->cat, NULL, find_expired, &c);
	pthread_mutex_unlock(&e->lock);
	for (size_t i = 0; r == 0 && i < c.n; i++) {
		int d = ds_snapshot_delete(e, c.ids[i]);
		if (d == 0) {
			log_info("engine: snapshot %s expired and was released", c.ids[i]);
			n++;
		} else if (d != -ENOENT && d != -EBUSY) {
			r = d;
		}
	}
	free(c.ids);
	if (r == 0 && n > 0)
		r = ds_engine_gc(e, NULL);
	if (released)
		*released = n;
	return r;
}

/* ---- resource groups and client tokens -------------------------------------------- */

int ds_rg_create(struct ds_engine *e, const char *name, char id_out[DS_ID_SIZE + 8])
{
	char id[DS_ID_SIZE + 8];
	int r;

	if (!name || !*name || strlen(name) >= DS_NAME_MAX)
		return -EINVAL;
	r = disk_new_id("rg-", id);
	if (r < 0)
		return r;
	pthread_mutex_lock(&e->lock);
	r = catalog_rg_insert(e->cat, id, name, now_s());
	pthread_mutex_unlock(&e->lock);
	if (r == 0)
		snprintf(id_out, DS_ID_SIZE + 8, "%s", id);
	return r;
}

int ds_rg_exists(struct ds_engine *e, const char *id)
{
	int r;

	pthread_mutex_lock(&e->lock);
	r = catalog_rg_get(e->cat, id, NULL, 0, NULL);
	pthread_mutex_unlock(&e->lock);
	return r;
}

int ds_rg_list(struct ds_engine *e, ds_rg_fn fn, void *opaque)
{
	int r;

	pthread_mutex_lock(&e->lock);
	r = catalog_rg_each(e->cat, fn, opaque);
	pthread_mutex_unlock(&e->lock);
	return r;
}

int ds_rg_delete(struct ds_engine *e, const char *id)
{
	int r;

	pthread_mutex_lock(&e->lock);
	r = catalog_rg_delete(e->cat, id);
	pthread_mutex_unlock(&e->lock);
	return r;
}

int ds_token_get(struct ds_engine *e, int64_t caller, const char *token, char action[64],
		 char fingerprint[65], char result[64])
{
	int r;

	pthread_mutex_lock(&e->lock);
	r = catalog_token_get(e->cat, caller, token, action, 64, fingerprint, 65, result, 64);
	pthread_mutex_unlock(&e->lock);
	return r;
}

int ds_token_put(struct ds_engine *e, int64_t caller, const char *token, const char *action,
		 const char *fingerprint, const char *result)
{
	int r;

	pthread_mutex_lock(&e->lock);
	r = catalog_token_put(e->cat, caller, token, action, fingerprint, result, now_s());
	pthread_mutex_unlock(&e->lock);
	return r;
}

/* ---- attached disks --------------------------------------------------------------- */

/* Opens the tracker of a disk being attached: what a crash left in its
 * overlay is merged into the disk, and its changed-block bitmap is loaded
 * when it can be trusted. */
static int open_tracker(struct ds_engine *e, const char *id, struct attached *a)
{
	char ov[DS_PATH_MAX + 64], cbt[DS_PATH_MAX + 64];
	uint64_t recovered = 0;
	int r;

	snprintf(ov, sizeof(ov), "%s/overlay", e->dir);
	snprintf(cbt, sizeof(cbt), "%s/cbt", e->dir);
	if ((mkdir(ov, 0700) < 0 && errno != EEXIST) || (mkdir(cbt, 0700) < 0 && errno != EEXIST))
		return -errno;
	disk_file(e, "overlay", id, ov, sizeof(ov));
	disk_file(e, "cbt", id, cbt, sizeof(cbt));
	r = cow_open(a->path, ov, ds_store_chunk_size(e->store),
		     e->overlay_prewrite < 0 ? 0
		     : e->overlay_prewrite ? (uint64_t)e->overlay_prewrite
					   : OVERLAY_PREWRITE_DEFAULT,
		     &a->cow, &recovered);
	if (r < 0) {
		log_error("engine: cannot open the overlay of %s: %s", id, strerror(-r));
		return r;
	}
	if (recovered)
		log_warn("engine: disk %s: %llu bytes of writes redirected before a crash were "
			 "merged into it", id, (unsigned long long)recovered);
	if (!cbt_load(cbt, a->cow, a->path))
		log_info("engine: disk %s: no trusted changed-block bitmap; its next snapshot "
			 "reads the whole disk", id);
	return 0;
}

/* After the frontend is gone: saves the bitmap clean and closes the tracker. */
static void close_tracker(struct ds_engine *e, struct attached *a)
{
	char cbt[DS_PATH_MAX + 64];

	disk_file(e, "cbt", a->disk_id, cbt, sizeof(cbt));
	cow_wait_merged(a->cow, 0);
	if (cbt_save(cbt, a->cow, a->path) < 0)
		log_warn("engine: cannot save the changed-block bitmap of %s; its next snapshot "
			 "reads the whole disk", a->disk_id);
	cow_close(a->cow);
	a->cow = NULL;
}

/* Serves one disk (status already In_use): FUSE mount in STATE/mnt/ID. */
static int attach_one(struct ds_engine *e, struct disk_row *d, char device_out[32])
{
	char mnt[DS_PATH_MAX + 64];
	struct attached *a;
	int r;

	if (geteuid() != 0)
		return -EPERM;
	if (disk_resolve(d) < 0)
		return -ENODEV;
	snprintf(mnt, sizeof(mnt), "%s/mnt", e->dir);
	mkdir(mnt, 0700);
	snprintf(mnt, sizeof(mnt), "%s/mnt/%s", e->dir, d->info.id);
	/* What a dead dsnapd left: its loop device and its FUSE mount. */
	frontend_cleanup_stale(mnt);
	if (mkdir(mnt, 0700) < 0 && errno != EEXIST)
		return -errno;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	snprintf(a->path, sizeof(a->path), "%s", d->info.path);
	r = open_tracker(e, d->info.id, a);
	if (r == 0) {
		r = frontend_attach(a->cow, d->info.path, mnt,
				    (enum frontend_transport)e->fuse_transport, &a->f);
		if (r < 0)
			cow_close(a->cow);
	}
	if (r < 0) {
		free(a);
		return r;
	}
	snprintf(a->disk_id, sizeof(a->disk_id), "%s", d->info.id);
	if (device_out)
		snprintf(device_out, 32, "%s", frontend_device(a->f));
	log_info("engine: disk %s attached as %s over %s", d->info.id, frontend_device(a->f),
		 frontend_transport_name(a->f));
	pthread_mutex_lock(&e->lock);
	a->next = e->attached;
	e->attached = a;
	pthread_mutex_unlock(&e->lock);
	return 0;
}

int ds_disk_attach(struct ds_engine *e, const char *id, char device_out[32])
{
	struct disk_row *d = malloc(sizeof(*d));
	int r;

	if (!d)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	r = catalog_disk_get(e->cat, id, d);
	if (r == 0 && d->info.locked)
		r = -ENOLCK;
	if (r == 0 && (strcmp(d->info.status, "Available") != 0 || job_for_disk(e, id)))
		r = -EBUSY;
	if (r == 0) {
		snprintf(d->info.status, sizeof(d->info.status), "In_use");
		r = catalog_disk_update(e->cat, d);
	}
	pthread_mutex_unlock(&e->lock);
	if (r == 0) {
		r = attach_one(e, d, device_out);
		if (r < 0)
			set_disk_status(e, id, "Available");
	}
	free(d);
	return r;
}

int ds_disk_detach(struct ds_engine *e, const char *id)
{
	struct disk_row *d = malloc(sizeof(*d));
	struct attached *a, **pa;
	int r;

	if (!d)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	r = catalog_disk_get(e->cat, id, d);
	a = r == 0 ? find_attached(e, id) : NULL;
	if (r == 0 && !a && strcmp(d->info.status, "In_use") != 0)
		r = -EINVAL; /* not attached */
	if (r == 0 && a && (a->users > 0 || a->detaching || job_for_disk(e, id)))
		r = -EALREADY; /* a snapshot is being created */
	if (r == 0 && a)
		a->detaching = true; /* no snapshot starts while it is detached */
	pthread_mutex_unlock(&e->lock);
	free(d);
	if (r < 0)
		return r;
	if (a) {
		/* Refused while mounted or held; the frontend stays as it was. */
		r = frontend_detach(a->f, false);
		if (r < 0) {
			pthread_mutex_lock(&e->lock);
			a->detaching = false;
			pthread_mutex_unlock(&e->lock);
			return r;
		}
		close_tracker(e, a);
		pthread_mutex_lock(&e->lock);
		for (pa = &e->attached; *pa; pa = &(*pa)->next)
			if (*pa == a) {
				*pa = a->next;
				break;
			}
		pthread_mutex_unlock(&e->lock);
		free(a);
	}
	return set_disk_status(e, id, "Available");
}

static int collect_in_use(const struct disk_row *d, void *opaque)
{
	struct list_ctx *c = opaque;

	return strcmp(d->info.status, "In_use") == 0 ? collect_disk(d, c) : 0;
}

/* At open: disks that were attached when dsnap stopped are cleaned up and
 * attached again (their loop device number may differ). */
static void reattach_all(struct ds_engine *e)
{
	struct list_ctx c = {0};
	struct disk_row *d = malloc(sizeof(*d));

	if (!d)
		return;
	pthread_mutex_lock(&e->lock);
	catalog_disk_each(e->cat, collect_in_use, &c);
	pthread_mutex_unlock(&e->lock);
	for (size_t i = 0; i < c.n; i++) {
		char dev[32];
		int r = -ENOENT;
		pthread_mutex_lock(&e->lock);
		if (catalog_disk_get(e->cat, c.ids[i], d) == 0)
			r = 0;
		pthread_mutex_unlock(&e->lock);
		if (r == 0)
			r = attach_one(e, d, dev);
		if (r < 0) {
			log_warn("engine: disk %s was attached when dsnap stopped and cannot be "
				 "attached again (%s); it is Available", c.ids[i], strerror(-r));
			set_disk_status(e, c.ids[i], "Available");
		}
	}
	free(c.ids);
	free(d);
}

int ds_fuse_uring_enable(bool on)
{
	return frontend_enable_uring(on);
}

/* Changes a disk's status (NULL: keep) and lock flag (-1: keep) in the catalog. */
static int disk_update(struct ds_engine *e, const char *id, const char *status, int locked)
{
	struct disk_row *d = malloc(sizeof(*d));
	int r;

	if (!d)
		return -ENOMEM;
	pthread_mutex_lock(&e->lock);
	r = catalog_disk_get(e->cat, id, d);
	if (r == 0) {
		if (status)
			snprintf(d->info.status, sizeof(d->info.status), "%s", status);
		if (locked >= 0)
			d->info.locked = locked;
		r = catalog_disk_update(e->cat, d);
	}
	pthread_mutex_unlock(&e->lock);
	free(d);
	return r;
}
