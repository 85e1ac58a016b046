/*
 * Helpers shared by the unit tests: scratch folders, a seeded PRNG, chunk
 * generators that can be replayed from a seed, and log capture.
 *
 * Everything here is static inline so each test binary stays one file plus
 * this header, and -Wmissing-prototypes stays quiet.
 */
#ifndef DSNAP_TESTS_TESTUTIL_H
#define DSNAP_TESTS_TESTUTIL_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/loop.h>

#include <cmocka.h>

#include <dsnap/dsnap.h>

#define TEST_SKIP 77

/* ---- scratch folders ------------------------------------------------------ */

static inline int rm_rf_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)ftw;
	if (type == FTW_DP)
		return rmdir(path) < 0 ? -1 : 0;
	return unlink(path) < 0 ? -1 : 0;
}

/* Removes path and everything under it. Missing is fine. */
static inline void rm_rf(const char *path)
{
	if (path && path[0])
		nftw(path, rm_rf_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh folder /tmp/dsnap-test-XXXXXX in buf (PATH_MAX bytes). 0 or -1. */
static inline int tmpdir_make(char *buf, size_t size)
{
	if (snprintf(buf, size, "/tmp/dsnap-test-XXXXXX") >= (int)size)
		return -1;
	return mkdtemp(buf) ? 0 : -1;
}

static inline void path_cat(char *out, size_t size, const char *dir, const char *name)
{
	int n = snprintf(out, size, "%s/%s", dir, name);

	if (n < 0 || (size_t)n >= size)
		abort();
}

static inline int64_t file_size(const char *path)
{
	struct stat sb;

	return stat(path, &sb) < 0 ? -1 : (int64_t)sb.st_size;
}

static inline bool file_exists(const char *path)
{
	return access(path, F_OK) == 0;
}

/*
 * In a forked child: cmocka's handlers would catch a crash and go on
 * running the rest of the tests in the child. Let the child die instead,
 * so the parent sees the signal.
 */
static inline void child_default_signals(void)
{
	static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS};

	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		signal(sigs[i], SIG_DFL);
}

/* ---- PRNG ----------------------------------------------------------------- */

static inline uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline void fill_random(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;
	uint64_t x = seed, v;

	while (len >= 8) {
		v = splitmix64(&x);
		memcpy(p, &v, 8);
		p += 8;
		len -= 8;
	}
	v = splitmix64(&x);
	memcpy(p, &v, len);
}

/* ---- replayable chunk contents ------------------------------------------- */

enum gen_kind {
	GEN_RANDOM, /* incompressible */
	GEN_ZERO,   /* all zero: never stored */
	GEN_TEXT,   /* text-like, compresses about 3x */
	GEN_SPARSE, /* runs of zeros and random bytes, compresses about 2x */
	GEN_KINDS,
};

static inline void fill_text(void *buf, size_t len, uint64_t seed)
{
	static const char *const words[] = {
		"block",  "device", "snapshot", "chunk", "store",  "pack",   "record", "index",
		"commit", "crash",  "recover",  "the",   "of",     "and",    "a",      "to",
		"data",   "write",  "read",     "disk",  "sector", "volume", "copy",   "on",
		"engine", "verify", "garbage",  "live",  "dead",   "bytes",  "lz4",    "hash",
	};
	uint8_t *p = buf;
	uint64_t x = seed;

	while (len > 0) {
		uint64_t r = splitmix64(&x);
		/* Eight words per PRNG call: 5 bits each. */
		for (int k = 0; k < 8 && len > 0; k++, r >>= 5) {
			const char *w = words[r & 31];
			size_t n = strlen(w);
			if (n > len)
				n = len;
			memcpy(p, w, n);
			p += n;
			len -= n;
			if (len > 0) {
				*p++ = (r & 0x3e0) == 0 ? '\n' : ' ';
				len--;
			}
		}
	}
}

static inline void fill_sparse(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;
	uint64_t x = seed;
	bool zero = true;

	/* Alternating runs of 256..4351 bytes; the first run is never all of
	 * a short buffer, so the chunk is not all zero. */
	while (len > 0) {
		size_t run = 256 + (splitmix64(&x) & 4095);
		if (run > len)
			run = len;
		if (zero && run == len && p == (uint8_t *)buf)
			zero = false;
		if (zero)
			memset(p, 0, run);
		else
			fill_random(p, run, splitmix64(&x));
		p += run;
		len -= run;
		zero = !zero;
	}
}

static inline void gen_fill(void *buf, size_t len, uint64_t seed, enum gen_kind kind)
{
	switch (kind) {
	case GEN_RANDOM:
		fill_random(buf, len, seed);
		break;
	case GEN_ZERO:
		memset(buf, 0, len);
		break;
	case GEN_TEXT:
		fill_text(buf, len, seed);
		break;
	default:
		fill_sparse(buf, len, seed);
		break;
	}
}

/* ---- assertions ------------------------------------------------------------ */

/* memcmp that names the first differing offset instead of dumping megabytes. */
#define assert_bytes_equal(a, b, len) \
	_assert_bytes_equal((const uint8_t *)(a), (const uint8_t *)(b), (len), __FILE__, __LINE__)

static inline void _assert_bytes_equal(const uint8_t *a, const uint8_t *b, size_t len,
				       const char *file, int line)
{
	if (memcmp(a, b, len) == 0)
		return;
	for (size_t i = 0; i < len; i++) {
		if (a[i] != b[i]) {
			print_error("%zu bytes differ first at offset %zu (0x%02x != 0x%02x)\n",
				    len, i, a[i], b[i]);
			break;
		}
	}
	_fail(file, line);
}

/* ---- log capture ------------------------------------------------------------ */

/*
 * The engine logs errors it is expected to hit in these tests (damaged
 * records, cut packs). They are kept here, so a test can check that a log
 * line names what it should, and printed only with DSNAP_TEST_VERBOSE set.
 */
struct log_capture {
	char last[1024];
	char all[16384];
	size_t all_len;
	unsigned count;
};

static struct log_capture test_log;

static inline void test_log_fn(enum ds_log_level level, const char *msg, void *opaque)
{
	size_t n = strlen(msg);

	(void)opaque;
	test_log.count++;
	snprintf(test_log.last, sizeof(test_log.last), "%s", msg);
	if (test_log.all_len + n + 2 < sizeof(test_log.all)) {
		memcpy(test_log.all + test_log.all_len, msg, n);
		test_log.all_len += n;
		test_log.all[test_log.all_len++] = '\n';
		test_log.all[test_log.all_len] = '\0';
	}
	if (getenv("DSNAP_TEST_VERBOSE"))
		fprintf(stderr, "[dsnap %d] %s\n", (int)level, msg);
}

static inline void test_log_capture(void)
{
	memset(&test_log, 0, sizeof(test_log));
	ds_set_log(test_log_fn, NULL, DS_LOG_DEBUG);
}

static inline bool test_log_has(const char *needle)
{
	return strstr(test_log.all, needle) != NULL;
}

/* ---- environment ------------------------------------------------------------ */

static inline double now_sec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Set by CMake for the ASan/UBSan build (DSNAP_SANITIZE=ON). */
static inline bool test_sanitized(void)
{
	return getenv("DSNAP_SANITIZED") != NULL;
}

/* Whether a program is on PATH or in the sbin folders (mkfs.* live there). */
static inline bool tool_exists(const char *name)
{
	static const char *const dirs[] = {"/usr/local/sbin", "/usr/sbin", "/sbin",
					   "/usr/local/bin", "/usr/bin", "/bin"};
	char p[PATH_MAX];

	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", dirs[i], name);
		if (access(p, X_OK) == 0)
			return true;
	}
	return false;
}

/* Runs argv (argv[0] looked up in the sbin and bin folders) with its output
 * thrown away. Returns its exit status, or -1 when it could not run. */
static inline int run_quiet(char *const argv[])
{
	pid_t pid = fork();
	int st;

	if (pid < 0)
		return -1;
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		if (null >= 0) {
			dup2(null, 1);
			dup2(null, 2);
		}
		setenv("PATH", "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin", 1);
		execvp(argv[0], argv);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- files ---------------------------------------------------------------------- */

/* Writes len bytes at off into path (created when missing, never truncated). */
static inline int write_at(const char *path, uint64_t off, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	const uint8_t *p = buf;
	int r = 0;

	if (fd < 0)
		return -errno;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			break;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	if (close(fd) < 0 && r == 0)
		r = -errno;
	return r;
}

/* Sets the size of path (created when missing). */
static inline int file_truncate(const char *path, uint64_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	int r;

	if (fd < 0)
		return -errno;
	r = ftruncate(fd, (off_t)size) < 0 ? -errno : 0;
	close(fd);
	return r;
}

/* The whole file in a malloc'ed buffer (at least one byte); NULL on error. */
static inline uint8_t *file_read_all(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat sb;
	uint8_t *buf = NULL;
	size_t got = 0;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &sb) < 0 || !(buf = malloc((size_t)sb.st_size + 1)))
		goto out;
	while (got < (size_t)sb.st_size) {
		ssize_t n = pread(fd, buf + got, (size_t)sb.st_size - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			free(buf);
			buf = NULL;
			goto out;
		}
		got += (size_t)n;
	}
	*len = got;
out:
	close(fd);
	return buf;
}

/* Fails the test unless the two files have the same size and bytes. */
#define assert_files_equal(a, b) _assert_files_equal((a), (b), __FILE__, __LINE__)

static inline void _assert_files_equal(const char *a, const char *b, const char *file, int line)
{
	size_t la = 0, lb = 0, i = 0;
	uint8_t *pa = file_read_all(a, &la), *pb = file_read_all(b, &lb);
	bool same = pa && pb && la == lb && memcmp(pa, pb, la) == 0;

	if (!same && pa && pb && la == lb) {
		while (pa[i] == pb[i])
			i++;
		print_error("%s and %s differ first at offset %zu\n", a, b, i);
	} else if (!same) {
		print_error("%s (%zu bytes) and %s (%zu bytes) differ in size or cannot be read\n",
			    a, la, b, lb);
	}
	free(pa);
	free(pb);
	if (!same)
		_fail(file, line);
}

/* True when [off, off + len) of fd holds no data (a hole, or past the end). */
static inline bool fd_range_is_hole(int fd, uint64_t off, uint64_t len)
{
	off_t d = lseek(fd, (off_t)off, SEEK_DATA);

	if (d < 0)
		return errno == ENXIO;
	return (uint64_t)d >= off + len;
}

static inline bool path_range_is_hole(const char *path, uint64_t off, uint64_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	bool hole;

	if (fd < 0)
		return false;
	hole = fd_range_is_hole(fd, off, len);
	close(fd);
	return hole;
}

/* Whether holes in a file under dir are kept (SEEK_DATA skips them). */
static inline bool fs_keeps_holes(const char *dir)
{
	char p[PATH_MAX];
	uint8_t b = 1;
	bool ok;

	path_cat(p, sizeof(p), dir, ".holeprobe");
	ok = write_at(p, 4u << 20, &b, 1) == 0 && path_range_is_hole(p, 0, 1u << 20);
	unlink(p);
	return ok;
}

/* ---- loop devices and mounts ------------------------------------------------ */

/*
 * Loop devices and mounts a test made, so that teardown can undo them on
 * every path (an assertion longjmps out of the test body). Only what is
 * listed here is ever detached or unmounted.
 */
#define SCRATCH_LOOPS 8
#define SCRATCH_MOUNTS 4

struct scratch_devs {
	char loop[SCRATCH_LOOPS][32];
	char mnt[SCRATCH_MOUNTS][PATH_MAX];
};

/* Root with a loop-control device: loop tests can run. */
static inline bool loop_available(void)
{
	int fd;

	if (geteuid() != 0)
		return false;
	fd = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

/* Binds file to /dev/loop<n>; tries the free device first, and when that
 * is avoid (a test that needs a different number), the next ones. */
static inline int loop_bind(int ctl, int ffd, const char *file, int n, char *dev, size_t size)
{
	struct loop_config cfg;
	int lfd, r;

	snprintf(dev, size, "/dev/loop%d", n);
	for (int i = 0; i < 50; i++) {
		lfd = open(dev, O_RDWR | O_CLOEXEC);
		if (lfd >= 0 || errno != ENOENT)
			break;
		ioctl(ctl, LOOP_CTL_ADD, n);
		usleep(10000); /* devtmpfs makes the node */
	}
	if (lfd < 0)
		return -errno;
	memset(&cfg, 0, sizeof(cfg));
	cfg.fd = (uint32_t)ffd;
	/* The name is only what losetup -l shows; a long one is cut. */
	memcpy(cfg.info.lo_file_name, file,
	       strnlen(file, sizeof(cfg.info.lo_file_name) - 1));
	r = ioctl(lfd, LOOP_CONFIGURE, &cfg) < 0 ? -errno : 0;
	close(lfd);
	return r;
}

/* Attaches file to a free loop device (not avoid, when given); its path
 * goes to dev and into d's list. 0 or -errno. */
static inline int loop_attach(struct scratch_devs *d, const char *file, const char *avoid,
			      char *dev, size_t size)
{
	int slot = -1, ctl, ffd, r = -EBUSY;

	for (int i = 0; i < SCRATCH_LOOPS && slot < 0; i++)
		if (!d->loop[i][0])
			slot = i;
	if (slot < 0)
		return -EMFILE;
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		return -errno;
	ffd = open(file, O_RDWR | O_CLOEXEC);
	if (ffd < 0) {
		r = -errno;
		close(ctl);
		return r;
	}
	for (int tries = 0; tries < 64 && r == -EBUSY; tries++) {
		int n = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (n < 0) {
			r = -errno;
			break;
		}
		snprintf(dev, size, "/dev/loop%d", n);
		if (avoid && strcmp(dev, avoid) == 0) {
			/* Another free one: scan upwards from the next number. */
			r = -EBUSY;
			for (int k = n + 1; k < n + 64 && r == -EBUSY; k++)
				r = loop_bind(ctl, ffd, file, k, dev, size);
			break;
		}
		r = loop_bind(ctl, ffd, file, n, dev, size);
	}
	close(ffd);
	close(ctl);
	if (r == 0)
		snprintf(d->loop[slot], sizeof(d->loop[slot]), "%s", dev);
	return r;
}

/* Detaches a loop device from d's list (and forgets it). */
static inline void loop_detach(struct scratch_devs *d, const char *dev)
{
	for (int i = 0; i < SCRATCH_LOOPS; i++) {
		if (!d->loop[i][0] || strcmp(d->loop[i], dev) != 0)
			continue;
		for (int tries = 0; tries < 100; tries++) {
			int fd = open(d->loop[i], O_RDONLY | O_CLOEXEC);
			int r = fd < 0 ? -errno : ioctl(fd, LOOP_CLR_FD, 0) < 0 ? -errno : 0;
			if (fd >= 0)
				close(fd);
			if (r != -EBUSY)
				break;
			usleep(10000);
		}
		d->loop[i][0] = '\0';
	}
}

/* Mounts dev on dir (created) and lists it in d. 0 or -errno. */
static inline int scratch_mount(struct scratch_devs *d, const char *dev, const char *dir,
				const char *fstype)
{
	int slot = -1;

	for (int i = 0; i < SCRATCH_MOUNTS && slot < 0; i++)
		if (!d->mnt[i][0])
			slot = i;
	if (slot < 0)
		return -EMFILE;
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	if (mount(dev, dir, fstype, 0, NULL) < 0)
		return -errno;
	snprintf(d->mnt[slot], sizeof(d->mnt[slot]), "%s", dir);
	return 0;
}

static inline void scratch_umount(struct scratch_devs *d, const char *dir)
{
	for (int i = 0; i < SCRATCH_MOUNTS; i++) {
		if (!d->mnt[i][0] || strcmp(d->mnt[i], dir) != 0)
			continue;
		if (umount(d->mnt[i]) < 0)
			umount2(d->mnt[i], MNT_DETACH);
		d->mnt[i][0] = '\0';
	}
}

/* Undoes everything in d: mounts first, then loop devices. */
static inline void scratch_release(struct scratch_devs *d)
{
	for (int i = SCRATCH_MOUNTS - 1; i >= 0; i--)
		if (d->mnt[i][0])
			scratch_umount(d, d->mnt[i]);
	for (int i = 0; i < SCRATCH_LOOPS; i++)
		if (d->loop[i][0])
			loop_detach(d, d->loop[i]);
}

#endif
