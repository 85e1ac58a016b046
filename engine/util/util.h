/* Internal helpers shared by the engine: logging, cleanup, full I/O. */
#ifndef DSNAP_UTIL_H
#define DSNAP_UTIL_H
#ifndef DSNAP_INTERNAL
#error "engine/util/util.h is private to libdsnap; include <dsnap/...> instead"
#endif

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include <dsnap/dsnap.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

void ds_log(enum ds_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...) ds_log(DS_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) ds_log(DS_LOG_WARN, __VA_ARGS__)
#define log_info(...) ds_log(DS_LOG_INFO, __VA_ARGS__)
#define log_debug(...) ds_log(DS_LOG_DEBUG, __VA_ARGS__)

/* Cleanup attributes: the variable is released when it goes out of scope. */
static inline void freep(void *p) { free(*(void **)p); }
static inline void closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}
#define _cleanup_free_ __attribute__((cleanup(freep)))
#define _cleanup_close_ __attribute__((cleanup(closep)))

/* Hands a cleanup-managed pointer or fd over to the caller. */
#define TAKE_PTR(p) ({ __typeof__(p) _t = (p); (p) = NULL; _t; })
#define TAKE_FD(fd) ({ int _t = (fd); (fd) = -1; _t; })

/* Little-endian fields of the on-disk formats. */
static inline void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t get_le64(const uint8_t *p)
{
	return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

/* The value of a hex digit, or -1. */
static inline int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* pread/pwrite that loop over short transfers and EINTR. 0 or -errno;
 * a read that meets end of file returns -ENODATA. */
int pread_full(int fd, void *buf, size_t len, uint64_t off);
int pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

/* pwritev that loops over short transfers; it consumes iov. */
struct iovec;
int pwritev_full(int fd, struct iovec *iov, int cnt, uint64_t off);

/* fsync of a directory, so that a created, renamed or removed entry lasts. */
int fsync_dir(const char *path);

/* Fills buf with random bytes from the kernel (small draws through a
 * per-thread buffer). 0 or -errno. */
int random_bytes(void *buf, size_t len);

/* I/O priority values (ioprio_set(2), io_uring's sqe->ioprio): best
 * effort (the default class) and idle, level 0. */
#define DS_IOPRIO_BE (2 << 13)
#define DS_IOPRIO_IDLE (3 << 13)

/* Overflow-checked a + b for sizes from outside. */
static inline bool add_overflows_u64(uint64_t a, uint64_t b, uint64_t *r)
{
	return __builtin_add_overflow(a, b, r);
}

#endif
