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
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

#endif
