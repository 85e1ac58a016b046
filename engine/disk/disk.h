/*
 * Disks: what a path is, how to find it again, and how to hold it still.
 */
#ifndef DSNAP_DISK_H
#define DSNAP_DISK_H
#ifndef DSNAP_INTERNAL
#error "engine/disk/disk.h is private to libdsnap"
#endif

#include "catalog/catalog.h"

/*
 * Fills kind, path (canonical), size, identity key and file-system facts
 * (libblkid) for path. -ENOENT for a missing path, -ENOTSUP for a kind
 * that cannot be a disk.
 */
int disk_probe(const char *path, struct disk_row *d);

/*
 * Finds the disk again: checks that d->info.path still is the disk named
 * by d->key, and when not (a loop device renumbered, a device renamed)
 * looks for it; updates path and size. -ENODEV when it is gone.
 */
int disk_resolve(struct disk_row *d);

/*
 * A point in time of a disk that is not attached: an fd whose bytes cannot
 * change while it is held.
 *   block device: opened O_EXCL (fails while mounted or held), kept open;
 *   image file on a file system with reflinks: FICLONEd into an unnamed
 *     temporary file beside it (O_TMPFILE), which is read instead;
 *   other image file: a read lease, taken only while no one has the file
 *     open for writing; an open for writing breaks it, which
 *     disk_pit_intact() reports, and the copy is abandoned.
 */
struct disk_pit {
	int fd;
	uint64_t size;
	bool cloned, leased;
};
/* -EBUSY when no point in time can be guaranteed now. */
int disk_pit_take(const struct disk_row *d, struct disk_pit *pit);
/* False once a lease has been broken (someone opened the file to write). */
bool disk_pit_intact(const struct disk_pit *pit);
void disk_pit_release(struct disk_pit *pit);

/*
 * Opens the disk for writing a restore: a block device O_EXCL (-EBUSY
 * while mounted), a file under a write lease (-EBUSY while anyone has it
 * open). The caller closes the fd.
 */
int disk_open_for_restore(const struct disk_row *d, int *fd_out);

/* Random ids: prefix ("d-" / "s-") and 20 lowercase letters and digits. */
int disk_new_id(const char *prefix, char id[DS_ID_SIZE]);

#endif
