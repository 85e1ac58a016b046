/*
 * Disks: probing, identity, and points in time for disks not attached.
 *
 * Identity. A path is not an identity: /dev/loop3 today is another disk
 * tomorrow. Files and loop devices are known by the backing file's
 * device and inode (LOOP_GET_STATUS64 reports them for a loop device), so
 * a renumbered loop device is found again by scanning the loop devices.
 * Other block devices are known by their /dev/disk/by-id name when udev
 * made one, else the UUID libblkid reads, else their device number.
 */
#include <dirent.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <linux/fs.h>
#include <linux/loop.h>

#include <blkid/blkid.h>

#include "disk/disk.h"
#include "util/util.h"

#define LOOP_MAJOR_NR 7

int disk_new_id(const char *prefix, char id[DS_ID_SIZE])
{
	static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
	size_t plen = strlen(prefix), n = 0;
	uint8_t rnd[64];
	int r;

	if (plen + 21 > DS_ID_SIZE)
		return -EINVAL;
	memcpy(id, prefix, plen);
	while (n < 20) {
		r = random_bytes(rnd, sizeof(rnd));
		if (r < 0)
			return r;
		/* 252 = 7 * 36: rejecting larger bytes keeps every symbol equally likely. */
		for (size_t i = 0; i < sizeof(rnd) && n < 20; i++)
			if (rnd[i] < 252)
				id[plen + n++] = alphabet[rnd[i] % 36];
	}
	id[plen + 20] = '\0';
	return 0;
}

static int blk_size(const char *path, uint64_t *size)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		return -errno;
	if (ioctl(fd, BLKGETSIZE64, size) < 0)
		return -errno;
	return 0;
}

/* Backing file of a loop device. -ENXIO when it has none. */
static int loop_backing(const char *path, uint64_t *dev, uint64_t *ino, char *file, size_t fsize)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	struct loop_info64 li;

	if (fd < 0)
		return -errno;
	if (ioctl(fd, LOOP_GET_STATUS64, &li) < 0)
		return -errno;
	*dev = li.lo_device;
	*ino = li.lo_inode;
	if (file)
		snprintf(file, fsize, "%s", (const char *)li.lo_file_name);
	return 0;
}

/*
 * A file's birth time, "btime:SECONDS.NANOSECONDS" ("" when the file system
 * keeps none). A file made after a registered one was removed may get its
 * inode number, never its birth time: with dev and ino it names the file.
 */
static void file_birth(int dirfd, const char *path, int flags, char *out, size_t size)
{
	struct statx stx;

	out[0] = '\0';
	if (statx(dirfd, path, flags, STATX_BTIME, &stx) == 0 && (stx.stx_mask & STATX_BTIME))
		snprintf(out, size, "btime:%lld.%09u", (long long)stx.stx_btime.tv_sec,
			 stx.stx_btime.tv_nsec);
}

/* The birth time of a loop device's backing file (sysfs has its path);
 * "" when it cannot be told (no such file there any more). */
static void loop_birth(const char *devpath, uint64_t dev, uint64_t ino, char *out, size_t size)
{
	const char *name = strrchr(devpath, '/');
	char sys[PATH_MAX], file[PATH_MAX];
	struct stat st;
	FILE *f;

	out[0] = '\0';
	snprintf(sys, sizeof(sys), "/sys/block/%s/loop/backing_file", name ? name + 1 : devpath);
	f = fopen(sys, "re");
	if (!f)
		return;
	if (fgets(file, sizeof(file), f)) {
		file[strcspn(file, "\n")] = '\0';
		if (stat(file, &st) == 0 && (uint64_t)st.st_dev == dev && st.st_ino == ino)
			file_birth(AT_FDCWD, file, 0, out, size);
	}
	fclose(f);
}

/* Whether a recorded birth time and the one found now name the same file;
 * when either is unknown, dev and ino alone decide (as before). */
static bool same_birth(const char *recorded, const char *now)
{
	return !recorded[0] || !now[0] || strcmp(recorded, now) == 0;
}

static void probe_fs(const char *path, struct ds_disk_info *i)
{
	blkid_probe pr = blkid_new_probe_from_filename(path);
	const char *v;

	i->fs_type[0] = i->fs_uuid[0] = i->fs_label[0] = '\0';
	if (!pr)
		return;
	blkid_probe_enable_superblocks(pr, 1);
	blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID |
						      BLKID_SUBLKS_LABEL);
	if (blkid_do_safeprobe(pr) == 0) {
		if (blkid_probe_lookup_value(pr, "TYPE", &v, NULL) == 0)
			snprintf(i->fs_type, sizeof(i->fs_type), "%s", v);
		if (blkid_probe_lookup_value(pr, "UUID", &v, NULL) == 0)
			snprintf(i->fs_uuid, sizeof(i->fs_uuid), "%s", v);
		if (blkid_probe_lookup_value(pr, "LABEL", &v, NULL) == 0)
			snprintf(i->fs_label, sizeof(i->fs_label), "%s", v);
	}
	blkid_free_probe(pr);
}

/* The /dev/disk/by-id name of a device, when udev made one. */
static bool by_id_name(const char *devpath, char *out, size_t size)
{
	DIR *d = opendir("/dev/disk/by-id");
	struct dirent *de;
	bool found = false;

	if (!d)
		return false;
	while (!found && (de = readdir(d))) {
		char link[PATH_MAX], real[PATH_MAX];
		if (de->d_name[0] == '.')
			continue;
		snprintf(link, sizeof(link), "/dev/disk/by-id/%s", de->d_name);
		if (realpath(link, real) && strcmp(real, devpath) == 0) {
			snprintf(out, size, "by-id:%s", de->d_name);
			found = true;
		}
	}
	closedir(d);
	return found;
}

int disk_probe(const char *path, struct disk_row *d)
{
	struct ds_disk_info *i = &d->info;
	char real[PATH_MAX];
	struct stat st;
	int r;

	memset(d, 0, sizeof(*d));
	if (!realpath(path, real))
		return -errno;
	if (strlen(real) >= sizeof(i->path))
		return -ENAMETOOLONG;
	if (stat(real, &st) < 0)
		return -errno;
	snprintf(i->path, sizeof(i->path), "%s", real);
	if (S_ISREG(st.st_mode)) {
		i->kind = DS_DISK_FILE;
		i->size = (uint64_t)st.st_size;
		d->key.dev = st.st_dev;
		d->key.ino = st.st_ino;
		file_birth(AT_FDCWD, real, 0, d->key.id, sizeof(d->key.id));
	} else if (S_ISBLK(st.st_mode)) {
		r = blk_size(real, &i->size);
		if (r < 0)
			return r;
		if (major(st.st_rdev) == LOOP_MAJOR_NR) {
			i->kind = DS_DISK_LOOP;
			r = loop_backing(real, &d->key.dev, &d->key.ino, NULL, 0);
			if (r < 0)
				return r == -ENXIO ? -ENODEV : r; /* a loop device with no file */
			loop_birth(real, d->key.dev, d->key.ino, d->key.id, sizeof(d->key.id));
		} else {
			i->kind = DS_DISK_BLOCK;
		}
	} else {
		return -ENOTSUP;
	}
	probe_fs(real, i);
	if (i->kind == DS_DISK_BLOCK && !by_id_name(real, d->key.id, sizeof(d->key.id))) {
		if (i->fs_uuid[0])
			snprintf(d->key.id, sizeof(d->key.id), "uuid:%s", i->fs_uuid);
		else
			snprintf(d->key.id, sizeof(d->key.id), "devt:%u:%u", major(st.st_rdev),
				 minor(st.st_rdev));
	}
	snprintf(i->status, sizeof(i->status), "Available");
	return 0;
}

static bool loop_matches(const char *path, const struct disk_key *k)
{
	uint64_t dev = 0, ino = 0;
	char birth[64];

	if (loop_backing(path, &dev, &ino, NULL, 0) < 0 || dev != k->dev || ino != k->ino)
		return false;
	loop_birth(path, dev, ino, birth, sizeof(birth));
	return same_birth(k->id, birth);
}

static int find_loop(const struct disk_key *k, char *out, size_t size)
{
	DIR *d = opendir("/sys/block");
	struct dirent *de;
	int r = -ENODEV;

	if (!d)
		return -ENODEV;
	while (r < 0 && (de = readdir(d))) {
		char dev[PATH_MAX];
		if (strncmp(de->d_name, "loop", 4) != 0)
			continue;
		snprintf(dev, sizeof(dev), "/dev/%s", de->d_name);
		if (loop_matches(dev, k)) {
			snprintf(out, size, "%s", dev);
			r = 0;
		}
	}
	closedir(d);
	return r;
}

static int find_block(const struct disk_key *k, char *out, size_t size)
{
	char *dev = NULL, real[PATH_MAX];

	if (strncmp(k->id, "by-id:", 6) == 0) {
		char link[PATH_MAX];
		snprintf(link, sizeof(link), "/dev/disk/by-id/%s", k->id + 6);
		if (!realpath(link, real))
			return -ENODEV;
		snprintf(out, size, "%s", real);
		return 0;
	}
	if (strncmp(k->id, "uuid:", 5) == 0)
		dev = blkid_evaluate_tag("UUID", k->id + 5, NULL);
	if (!dev)
		return -ENODEV;
	snprintf(out, size, "%s", dev);
	free(dev);
	return 0;
}

int disk_resolve(struct disk_row *d)
{
	struct ds_disk_info *i = &d->info;
	char birth[64];
	struct stat st;
	int r;

	switch (i->kind) {
	case DS_DISK_FILE:
		if (stat(i->path, &st) < 0 || !S_ISREG(st.st_mode) || st.st_dev != d->key.dev ||
		    st.st_ino != d->key.ino)
			return -ENODEV;
		file_birth(AT_FDCWD, i->path, 0, birth, sizeof(birth));
		if (!same_birth(d->key.id, birth))
			return -ENODEV;
		i->size = (uint64_t)st.st_size;
		return 0;
	case DS_DISK_LOOP:
		if (!loop_matches(i->path, &d->key)) {
			r = find_loop(&d->key, i->path, sizeof(i->path));
			if (r < 0)
				return r;
		}
		break;
	case DS_DISK_BLOCK:
		if (strncmp(d->key.id, "devt:", 5) != 0) {
			r = find_block(&d->key, i->path, sizeof(i->path));
			if (r < 0)
				return r;
		} else {
			unsigned ma, mi;
			if (sscanf(d->key.id, "devt:%u:%u", &ma, &mi) != 2 ||
			    stat(i->path, &st) < 0 || !S_ISBLK(st.st_mode) ||
			    st.st_rdev != makedev(ma, mi))
				return -ENODEV;
		}
		break;
	default:
		return -EINVAL;
	}
	if (stat(i->path, &st) < 0 || !S_ISBLK(st.st_mode))
		return -ENODEV;
	r = blk_size(i->path, &i->size);
	return r == -ENOENT || r == -ENXIO ? -ENODEV : r;
}

/* ---- points in time ------------------------------------------------------ */

/* Lease breaks are noticed by polling F_GETLEASE. The kernel still signals
 * the holder; SIGURG's default action is to ignore it, unlike SIGIO's. */
static int take_lease(int fd, int type)
{
	if (fcntl(fd, F_SETSIG, SIGURG) < 0)
		return -errno;
	if (fcntl(fd, F_SETLEASE, type) < 0)
		return errno == EAGAIN ? -EBUSY : -errno;
	return 0;
}

/*
 * File systems (by device) where a reflink clone is not supported: not
 * tried again. Each try creates an O_TMPFILE inode and drops it, which on
 * ext4 costs a scan of the inode bitmap that grows with the inodes dropped
 * recently, and the lease that follows is the point in time there anyway.
 */
#define NOCLONE_MAX 16
static pthread_mutex_t noclone_lock = PTHREAD_MUTEX_INITIALIZER;
static dev_t noclone[NOCLONE_MAX];
static unsigned nnoclone;

/* Caller holds noclone_lock. */
static bool noclone_has(dev_t dev)
{
	for (unsigned i = 0; i < nnoclone; i++)
		if (noclone[i] == dev)
			return true;
	return false;
}

static bool clone_unsupported(dev_t dev)
{
	bool found;

	pthread_mutex_lock(&noclone_lock);
	found = noclone_has(dev);
	pthread_mutex_unlock(&noclone_lock);
	return found;
}

static void clone_note_unsupported(dev_t dev)
{
	pthread_mutex_lock(&noclone_lock);
	if (!noclone_has(dev) && nnoclone < NOCLONE_MAX)
		noclone[nnoclone++] = dev;
	pthread_mutex_unlock(&noclone_lock);
}

static int clone_file(int src, dev_t dev, const char *path)
{
	char dir[PATH_MAX];
	int fd, r;

	if (clone_unsupported(dev))
		return -EOPNOTSUPP;
	snprintf(dir, sizeof(dir), "%s", path);
	fd = open(dirname(dir), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
	} else if (ioctl(fd, FICLONE, src) < 0) {
		r = -errno;
		close(fd);
	} else {
		return fd;
	}
	/* Not supported by the file system, as opposed to not possible for
	 * this file or now (EINVAL: a NOCOW image on btrfs; EACCES, ENOSPC). */
	if (r == -EOPNOTSUPP || r == -ENOTTY || r == -EXDEV || r == -EISDIR)
		clone_note_unsupported(dev);
	return r;
}

int disk_pit_take(const struct disk_row *d, struct disk_pit *pit)
{
	const struct ds_disk_info *i = &d->info;
	char birth[64];
	struct stat st;
	int src, r;

	memset(pit, 0, sizeof(*pit));
	pit->fd = -1;
	if (i->kind != DS_DISK_FILE) {
		pit->fd = open(i->path, O_RDONLY | O_EXCL | O_CLOEXEC);
		if (pit->fd < 0)
			return errno == EBUSY ? -EBUSY : errno == ENOENT ? -ENODEV : -errno;
		r = ioctl(pit->fd, BLKGETSIZE64, &pit->size) < 0 ? -errno : 0;
		if (r < 0)
			disk_pit_release(pit);
		return r;
	}
	src = open(i->path, O_RDONLY | O_CLOEXEC);
	if (src < 0)
		return errno == ENOENT ? -ENODEV : -errno;
	file_birth(src, "", AT_EMPTY_PATH, birth, sizeof(birth));
	if (fstat(src, &st) < 0 || st.st_dev != d->key.dev || st.st_ino != d->key.ino ||
	    !same_birth(d->key.id, birth)) {
		close(src);
		return -ENODEV;
	}
	pit->size = (uint64_t)st.st_size;
	/* A reflink clone is a point in time whoever writes the file. */
	r = clone_file(src, st.st_dev, i->path);
	if (r >= 0) {
		close(src);
		pit->fd = r;
		pit->cloned = true;
		return 0;
	}
	r = take_lease(src, F_RDLCK);
	if (r < 0) {
		close(src);
		return r;
	}
	/* Size again, under the lease: nobody can write now. */
	if (fstat(src, &st) < 0) {
		r = -errno;
		close(src);
		return r;
	}
	pit->size = (uint64_t)st.st_size;
	pit->fd = src;
	pit->leased = true;
	return 0;
}

bool disk_pit_intact(const struct disk_pit *pit)
{
	return !pit->leased || fcntl(pit->fd, F_GETLEASE) == F_RDLCK;
}

void disk_pit_release(struct disk_pit *pit)
{
	if (pit->fd >= 0) {
		if (pit->leased)
			fcntl(pit->fd, F_SETLEASE, F_UNLCK);
		close(pit->fd);
	}
	pit->fd = -1;
}

int disk_open_for_restore(const struct disk_row *d, int *fd_out)
{
	const struct ds_disk_info *i = &d->info;
	char birth[64];
	struct stat st;
	int fd, r;

	if (i->kind != DS_DISK_FILE) {
		fd = open(i->path, O_WRONLY | O_EXCL | O_CLOEXEC);
		if (fd < 0)
			return errno == EBUSY ? -EBUSY : errno == ENOENT ? -ENODEV : -errno;
		*fd_out = fd;
		return 0;
	}
	fd = open(i->path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ENODEV : -errno;
	file_birth(fd, "", AT_EMPTY_PATH, birth, sizeof(birth));
	if (fstat(fd, &st) < 0 || st.st_dev != d->key.dev || st.st_ino != d->key.ino ||
	    !same_birth(d->key.id, birth)) {
		close(fd);
		return -ENODEV;
	}
	/* A write lease is granted only while nobody else has the file open
	 * (a loop device over it, a program reading it), so a reset never
	 * starts under someone's feet. The lease is not polled during the
	 * restore: a program opening the image meanwhile waits up to the
	 * kernel's lease-break-time (45 s by default) and then sees it half
	 * restored. Attach a disk to keep it in use while it is reset. */
	r = take_lease(fd, F_WRLCK);
	if (r < 0) {
		close(fd);
		return r;
	}
	*fd_out = fd;
	return 0;
}
