/*
 * The frontend of a live disk: dsnapd serves the disk as one file on a
 * FUSE mount it owns (speaking the FUSE protocol itself, over io_uring when
 * the kernel offers it, else over /dev/fuse), and sets up a loop device
 * with direct I/O on that file. Users mkfs, mount and write the loop
 * device; every read and write passes through dsnapd.
 */
#ifndef DSNAP_FRONTEND_H
#define DSNAP_FRONTEND_H
#ifndef DSNAP_INTERNAL
#error "engine/frontend/frontend.h is private to libdsnap"
#endif

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum frontend_transport {
	FRONTEND_AUTO = 0,  /* io_uring when the kernel offers it, else /dev/fuse */
	FRONTEND_URING = 1, /* io_uring or fail */
	FRONTEND_DEV = 2,   /* classic /dev/fuse */
};

struct frontend;

struct cow;

/*
 * Serves the disk behind the tracker cow (its backing, named name in the
 * log) on a FUSE mount at mountpoint (an empty folder) and attaches a loop
 * device to it. Root only. *out is yours (frontend_detach); cow must
 * outlive it. -EOPNOTSUPP when FRONTEND_URING was asked and the kernel
 * does not offer it.
 */
int frontend_attach(struct cow *cow, const char *name, const char *mountpoint,
		    enum frontend_transport transport, struct frontend **out);

/* Reads len bytes at off into buf: len (or fewer at the end) or -errno. */
typedef ssize_t (*frontend_read_fn)(void *arg, void *buf, size_t len, uint64_t off);

/*
 * Serves a read-only image of size bytes whose reads come from read(arg)
 * (called from several threads at once) on a FUSE mount at mountpoint
 * (/dev/fuse transport), with a read-only loop device on it. Root only.
 * arg must outlive the frontend.
 */
int frontend_attach_reader(frontend_read_fn read, void *arg, uint64_t size, const char *name,
			   const char *mountpoint, struct frontend **out);

/* The loop device users open ("/dev/loopN"). */
const char *frontend_device(const struct frontend *f);
/* "io_uring" or "/dev/fuse". */
const char *frontend_transport_name(const struct frontend *f);

/*
 * Detaches: refused with -EBUSY while the loop device is mounted or held
 * open exclusively (unless force); then clears the loop device, unmounts
 * FUSE, stops the threads and frees f (also on -EBUSY, f stays valid).
 */
int frontend_detach(struct frontend *f, bool force);

/*
 * Cleans up after a dead dsnapd: detaches loop devices whose backing file
 * lies in the FUSE mount at mountpoint and lazily unmounts it. 0 when
 * there was nothing to do or it is clean now.
 */
int frontend_cleanup_stale(const char *mountpoint);

/* Turns /sys/module/fuse/parameters/enable_uring on (or off). */
int frontend_enable_uring(bool on);

#endif
