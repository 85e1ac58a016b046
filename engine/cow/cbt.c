/*
 * The changed-block bitmap on disk (doc/store-format.md has the bytes):
 * saved clean when a disk is detached cleanly, marked dirty as soon as it
 * is attached again. A dirty file (dsnapd died), a different size or
 * chunk size, or a base whose modification time or identity changed
 * while it was not attached make the bitmap untrusted: every chunk counts
 * as changed and the next snapshot reads the whole disk.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cow/cow.h"
#include "util/util.h"

#define CBT_MAGIC "DSCBT001"
#define CBT_HEADER 128
#define CBT_CLEAN 1u

struct fingerprint {
	uint64_t dev, ino, size, mtime_ns;
	bool blockdev;
};

static int fingerprint(const char *path, struct fingerprint *fp)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return -errno;
	fp->blockdev = S_ISBLK(st.st_mode);
	fp->dev = S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev;
	fp->ino = S_ISBLK(st.st_mode) ? 0 : st.st_ino;
	fp->size = S_ISBLK(st.st_mode) ? 0 : (uint64_t)st.st_size;
	fp->mtime_ns = S_ISBLK(st.st_mode)
			       ? 0
			       : (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
	return 0;
}

static void header(uint8_t *h, const struct cow *c, const struct fingerprint *fp, uint32_t flags,
		   const char *since)
{
	memset(h, 0, CBT_HEADER);
	memcpy(h, CBT_MAGIC, 8);
	put_le32(h + 8, flags);
	put_le64(h + 16, cow_size(c));
	put_le64(h + 24, cow_nchunks(c));
	put_le64(h + 32, fp->dev);
	put_le64(h + 40, fp->ino);
	put_le64(h + 48, fp->size);
	put_le64(h + 56, fp->mtime_ns);
	snprintf((char *)h + 64, 64, "%s", since ? since : "");
}

/* Makes a rename or unlink in path's folder durable. */
static void sync_dir(const char *path)
{
	char dir[4200];
	char *slash;
	int fd;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash)
		return;
	*slash = '\0';
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		if (fsync(fd) < 0)
			log_warn("cbt: cannot sync %s: %s", dir, strerror(errno));
		close(fd);
	}
}

int cbt_save(const char *path, struct cow *c, const char *base_path)
{
	char since[COW_SINCE_MAX];
	size_t bytes = (size_t)((cow_nchunks(c) + 63) / 64) * 8;
	uint64_t *bits = calloc(1, bytes + 8);
	char tmp[4200];
	uint8_t h[CBT_HEADER];
	struct fingerprint fp = {0};
	int fd, r = 0;

	if (!bits)
		return -ENOMEM;
	cow_since(c, since, NULL);
	r = fingerprint(base_path, &fp);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = r < 0 ? -1 : open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (r == 0 && fd < 0)
		r = -errno;
	if (r == 0) {
		cow_bitmap_get(c, bits);
		for (size_t i = 0; i < bytes / 8; i++)
			put_le64((uint8_t *)&bits[i], bits[i]);
		header(h, c, &fp, CBT_CLEAN, since);
		if (pwrite(fd, h, CBT_HEADER, 0) != CBT_HEADER ||
		    pwrite(fd, bits, bytes, CBT_HEADER) != (ssize_t)bytes || fsync(fd) < 0)
			r = -EIO;
	}
	if (fd >= 0)
		close(fd);
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	else
		sync_dir(path);
	free(bits);
	return r;
}

int cbt_load(const char *path, struct cow *c, const char *base_path)
{
	size_t bytes = (size_t)((cow_nchunks(c) + 63) / 64) * 8;
	uint64_t *bits = calloc(1, bytes + 8);
	uint8_t h[CBT_HEADER], want[CBT_HEADER];
	struct fingerprint fp = {0};
	bool trusted = false;
	int fd = open(path, O_RDWR | O_CLOEXEC);

	if (fd >= 0 && bits && fingerprint(base_path, &fp) == 0 && !fp.blockdev &&
	    pread(fd, h, CBT_HEADER, 0) == CBT_HEADER && (get_le32(h + 8) & CBT_CLEAN)) {
		h[127] = '\0';
		header(want, c, &fp, CBT_CLEAN, (const char *)h + 64);
		trusted = memcmp(h, want, CBT_HEADER) == 0 &&
			  pread(fd, bits, bytes, CBT_HEADER) == (ssize_t)bytes;
	}
	if (trusted) {
		for (size_t i = 0; i < bytes / 8; i++)
			bits[i] = get_le64((uint8_t *)&bits[i]);
		cow_bitmap_set(c, bits);
		cow_since(c, NULL, (const char *)h + 64);
		/* From now on the bitmap lives in memory: a crash leaves it dirty. */
		put_le32(h + 8, 0);
		if (pwrite(fd, h, CBT_HEADER, 0) != CBT_HEADER || fdatasync(fd) < 0)
			trusted = false;
	}
	if (!trusted) {
		cow_distrust(c);
		cow_since(c, NULL, "");
		if (fd >= 0) {
			unlink(path);
			sync_dir(path);
		}
	}
	if (fd >= 0)
		close(fd);
	free(bits);
	return trusted ? 1 : 0;
}
