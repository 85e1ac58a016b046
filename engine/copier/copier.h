/*
 * The copier: moves a disk image between an fd and the store with
 * io_uring, one worker (thread and ring) per CPU.
 */
#ifndef DSNAP_COPIER_H
#define DSNAP_COPIER_H
#ifndef DSNAP_INTERNAL
#error "engine/copier/copier.h is private to libdsnap"
#endif

#include <stdatomic.h>

#include <dsnap/snapshot.h>
#include <dsnap/store.h>

struct copier_job {
	struct ds_store *s;
	int fd;
	struct ds_manifest *m; /* backup: ids filled in; restore: ids read */
	/* backup: holes found with SEEK_DATA are not read (fd is a file) */
	bool seek_holes;
	/* restore: what to do with zero chunks: leave them (a new, sized file
	 * whose holes already read as zeros), punch them (an existing file),
	 * or write zeros (a device) */
	enum { ZERO_SKIP, ZERO_PUNCH, ZERO_WRITE } zeros;
	unsigned workers;          /* 0 = one per CPU */
	atomic_bool *cancel;       /* may be NULL; set it to stop the copy (-ECANCELED) */
	/* Called between slabs; returning false stops the copy with -ESTALE
	 * (the source stopped being a point in time). May be NULL. */
	bool (*still_valid)(void *opaque);
	ds_progress_fn progress;   /* may be called from any worker, one at a time */
	void *opaque;
	/* backup: called once a slab's chunks [first, first + n) have been
	 * read and stored, their ids in m final. May be NULL. */
	void (*read_done)(void *opaque, uint64_t first, uint64_t n);
	/* backup, incremental: chunks whose bit in changed is clear are not
	 * read; they keep prev's ids. One unchanged chunk in audit_every is
	 * read anyway and checked against prev (0: none). */
	const struct ds_manifest *prev;
	const uint64_t *changed;
	unsigned audit_every, audit_seed; /* the seed varies which chunks */
	/* I/O priority of the copier's reads and writes (an ioprio value, 0
	 * for the default); read before every slab, so it can change. */
	atomic_int *ioprio;
	bool idle_cpu; /* workers run SCHED_IDLE */
	/* bytes read per second at most, 0 = no limit; read before every
	 * run of reads, so it can change while the copy runs */
	atomic_uint_fast64_t max_rate;

	/* results */
	atomic_uint_fast64_t bytes_read;   /* bytes read from the disk (holes excluded) */
	atomic_uint_fast64_t bytes_stored; /* record bytes the copy added to the store */
	atomic_uint_fast64_t bytes_done;   /* progress: disk bytes handled */
	atomic_uint_fast64_t audited;      /* unchanged chunks read and checked */
	atomic_uint_fast64_t audit_mismatch; /* of those, differing from prev */
};

/* Reads m->disk_size bytes of fd into the store, filling m->ids. */
int copier_backup(struct copier_job *j);
/* Writes the image of m to fd (sized by the caller), every chunk verified. */
int copier_restore(struct copier_job *j);

#endif
