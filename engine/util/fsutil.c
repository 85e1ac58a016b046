#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <sys/uio.h>

#include "util/util.h"

int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t r = pread(fd, p, len, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -ENODATA;
		p += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t r = pwrite(fd, p, len, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		len -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int fsync_dir(const char *path)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		return -errno;
	return 0;
}

static int getrandom_full(uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t r = getrandom(p, len, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

/*
 * Small draws (ids, request ids: two per CreateSnapshot) come from a
 * per-thread buffer filled 256 bytes at a time: a system call costs more
 * than the rest of making an id, and on a paravirtualised guest a few
 * microseconds. A forked child starts with an empty buffer, so parent and
 * child never hand out the same bytes.
 */
#define RANDOM_POOL 256
static _Thread_local uint8_t pool[RANDOM_POOL];
static _Thread_local size_t pool_left;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_forget(void)
{
	explicit_bzero(pool, sizeof(pool));
	pool_left = 0;
}

static void pool_init(void)
{
	pthread_atfork(NULL, NULL, pool_forget);
}

int random_bytes(void *buf, size_t len)
{
	uint8_t *out = buf;

	if (len > RANDOM_POOL / 4)
		return getrandom_full(out, len);
	pthread_once(&pool_once, pool_init);
	if (pool_left < len) {
		int r = getrandom_full(pool, sizeof(pool));
		if (r < 0)
			return r;
		pool_left = sizeof(pool);
	}
	/* Taken from the end and wiped: never handed out twice. */
	pool_left -= len;
	memcpy(out, pool + pool_left, len);
	explicit_bzero(pool + pool_left, len);
	return 0;
}

int pwritev_full(int fd, struct iovec *iov, int cnt, uint64_t off)
{
	while (cnt > 0) {
		ssize_t r = pwritev(fd, iov, MIN(cnt, IOV_MAX), (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		off += (uint64_t)r;
		/* Skip what was written; a short write leaves a partial iovec. */
		while (cnt > 0 && (size_t)r >= iov->iov_len) {
			r -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0 && r > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + r;
			iov->iov_len -= (size_t)r;
		}
	}
	return 0;
}
