/*
 * Crash tests of the chunk store (after SQLite test/crash9.test): a child
 * process stops itself with SIGKILL at its Nth write step (pack write,
 * fdatasync or commit; a pack write that is the last step is torn in half),
 * for increasing N. The parent then opens the store and checks what
 * store.h promises: it opens, verifies clean, and holds every chunk whose
 * put had returned, byte for byte.
 *
 * The child reports each batch after its put returned 0, in one write() to
 * a pipe: id and seed of every chunk, so the parent can make the bytes
 * again. One store serves all N, so each child starts on a store that has
 * recovered from the crashes before it.
 */
#include "testutil.h"

#include <limits.h>
#include <signal.h>
#include <sys/wait.h>
#include <dirent.h>

#include <dsnap/store.h>

#include "store/pack.h"
#include "store/store_priv.h"

#define KiB 1024u
#define MiB (1024u * 1024u)
#define CHUNK (16 * KiB)

struct fx {
	char tmp[PATH_MAX];
	char dir[PATH_MAX];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f || tmpdir_make(f->tmp, sizeof(f->tmp)) < 0) {
		free(f);
		return -1;
	}
	path_cat(f->dir, sizeof(f->dir), f->tmp, "store");
	test_log_capture();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	rm_rf(f->tmp);
	free(f);
	return 0;
}

/* ---- what the child reports ------------------------------------------------ */

enum { SET_PUT = 0, SET_A = 1, SET_B = 2 };

struct report {
	ds_chunk_id id;
	uint64_t seed;
	uint32_t set;
	uint32_t pad;
};

struct reports {
	struct report *v;
	size_t n, cap;
};

static void reports_add(struct reports *r, const struct report *rep)
{
	if (r->n == r->cap) {
		r->cap = r->cap ? 2 * r->cap : 1024;
		r->v = realloc(r->v, r->cap * sizeof(*r->v));
		assert_non_null(r->v);
	}
	r->v[r->n++] = *rep;
}

struct spec {
	uint64_t seed;
	uint32_t len;
	enum gen_kind kind;
};

/* Contents follow from the seed alone: mostly small chunks, so the checks
 * after each of many crashes stay cheap. */
static struct spec crash_spec(uint64_t seed)
{
	uint64_t x = seed, r = splitmix64(&x);
	struct spec sp = {.seed = seed};
	unsigned k = r % 8;

	sp.kind = k == 0 ? GEN_ZERO : k <= 2 ? GEN_TEXT : k == 3 ? GEN_SPARSE : GEN_RANDOM;
	sp.len = (r >> 8) % 8 == 0 ? CHUNK : 64 + (uint32_t)((r >> 16) % 4032);
	return sp;
}

/* Full chunks of random bytes (or sparse ones) for the GC test. */
static struct spec gc_spec(uint64_t seed, uint32_t len)
{
	return (struct spec){.seed = seed, .len = len, .kind = seed % 4 ? GEN_RANDOM : GEN_SPARSE};
}

static struct spec gc_report_spec(const struct report *rep)
{
	return gc_spec(rep->seed, rep->set == SET_A ? 4 * KiB : CHUNK);
}

static void fill_chunk(struct ds_chunk *c, const struct spec *sp)
{
	c->data = malloc(sp->len);
	if (!c->data)
		_exit(90);
	gen_fill(c->data, sp->len, sp->seed, sp->kind);
	c->len = sp->len;
}

static void write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(91);
		p += n;
		len -= (size_t)n;
	}
}

/* Reads reports until EOF. */
static void read_reports(int fd, struct reports *out)
{
	uint8_t buf[sizeof(struct report) * 64];
	size_t have = 0;

	for (;;) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - have);
		if (n < 0 && errno == EINTR)
			continue;
		assert_true(n >= 0);
		if (n == 0)
			break;
		have += (size_t)n;
		size_t whole = have / sizeof(struct report);
		for (size_t i = 0; i < whole; i++) {
			struct report rep;
			memcpy(&rep, buf + i * sizeof(rep), sizeof(rep));
			reports_add(out, &rep);
		}
		memmove(buf, buf + whole * sizeof(struct report), have % sizeof(struct report));
		have %= sizeof(struct report);
	}
	/* A report is written whole or not at all. */
	assert_int_equal(have, 0);
}

/* Runs child(arg, fd) in a child process; returns its wait status. */
static int run_child(void (*child)(void *arg, int fd), void *arg, struct reports *out)
{
	int p[2], status;
	pid_t pid;

	assert_int_equal(pipe(p), 0);
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		child_default_signals();
		close(p[0]);
		child(arg, p[1]);
		_exit(0);
	}
	close(p[1]);
	read_reports(p[0], out);
	close(p[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return status;
}

static void expect_status(int status, long n, bool must_crash)
{
	if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
		return;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !must_crash)
		return;
	if (WIFEXITED(status))
		fail_msg("crash point %ld: child exited with %d", n, WEXITSTATUS(status));
	fail_msg("crash point %ld: child ended by signal %d", n,
		 WIFSIGNALED(status) ? WTERMSIG(status) : -1);
}

/* ---- checks in the parent ---------------------------------------------------- */

static void expect_report(struct ds_store *s, const struct report *rep, const struct spec *sp,
			  uint8_t *got, uint8_t *want)
{
	struct ds_chunk c = {.id = rep->id, .data = got};
	int r = ds_store_get(s, &c, 1);

	if (r != 0 || c.err != 0)
		fail_msg("chunk of seed %llu (set %u) lost: %d", (unsigned long long)rep->seed,
			 rep->set, r);
	if (sp->kind == GEN_ZERO) {
		assert_true(ds_chunk_id_is_zero(&rep->id));
		assert_int_equal(c.len, CHUNK);
		assert_true(ds_is_zero(got, CHUNK));
		return;
	}
	assert_int_equal(c.len, sp->len);
	gen_fill(want, sp->len, sp->seed, sp->kind);
	assert_bytes_equal(got, want, sp->len);
}

/* After recovery no pack file is unaccounted for and none is longer than
 * its committed length: torn writes are gone. */
static void expect_packs_match(const char *dir, struct ds_store *s)
{
	char packs[PATH_MAX], p[PATH_MAX + 300];
	struct ds_store_stats st;
	struct dirent *de;
	uint64_t bytes = 0, n = 0;
	uint32_t id;
	DIR *d;

	assert_int_equal(ds_store_stats(s, &st), 0);
	path_cat(packs, sizeof(packs), dir, "packs");
	d = opendir(packs);
	assert_non_null(d);
	while ((de = readdir(d))) {
		if (pack_name_parse(de->d_name, &id) < 0)
			continue;
		snprintf(p, sizeof(p), "%s/%s", packs, de->d_name);
		bytes += (uint64_t)file_size(p);
		n++;
	}
	closedir(d);
	assert_int_equal(n, st.packs);
	assert_int_equal(bytes, st.pack_bytes);
}

static void bad_fail(const ds_chunk_id *id, int err, void *opaque)
{
	char hex[DS_CHUNK_ID_HEX];

	ds_chunk_id_to_hex(id, hex);
	print_error("bad chunk %s: %d (after crash point %ld)\n", hex, err, *(long *)opaque);
}

static struct ds_store *open_checked(const char *dir, long n)
{
	struct ds_store *s = NULL;
	int r = ds_store_open(dir, &s);

	if (r != 0)
		fail_msg("open after crash point %ld: %d", n, r);
	if (ds_store_verify(s, bad_fail, &n) != 0) {
		ds_store_close(s);
		fail_msg("verify after crash point %ld found bad chunks", n);
	}
	expect_packs_match(dir, s);
	return s;
}

/* ---- part 1: crashes during puts ------------------------------------------------ */

#define P_BATCHES 24
#define P_POOL 200 /* seeds every child may put again */

struct put_child {
	const char *dir;
	long n;
};

static void put_child_main(void *arg, int fd)
{
	struct put_child *pc = arg;
	struct ds_store *s;
	uint64_t x = 0x1234567; /* the same plan for every N; fresh seeds differ */

	if (ds_store_open(pc->dir, &s) != 0)
		_exit(10);
	store_set_crash_after(pc->n);
	for (int b = 0; b < P_BATCHES; b++) {
		struct ds_chunk c[6];
		struct report rep[6];
		int k = 1 + (int)(splitmix64(&x) % 6);

		memset(c, 0, sizeof(c));
		memset(rep, 0, sizeof(rep));
		for (int j = 0; j < k; j++) {
			uint64_t r = splitmix64(&x) % 10;
			uint64_t seed;

			if (r <= 1)
				seed = splitmix64(&x) % P_POOL; /* maybe stored before */
			else if (r == 2 && j > 0)
				seed = rep[j - 1].seed; /* twice in one batch */
			else
				seed = (uint64_t)pc->n << 32 | (uint64_t)b << 8 | (uint64_t)j;
			struct spec sp = crash_spec(seed);
			fill_chunk(&c[j], &sp);
			rep[j].seed = seed;
			rep[j].set = SET_PUT;
		}
		if (ds_store_put(s, c, (size_t)k) != 0)
			_exit(11);
		for (int j = 0; j < k; j++) {
			rep[j].id = c[j].id;
			free(c[j].data);
		}
		write_all(fd, rep, (size_t)k * sizeof(rep[0]));
	}
	store_set_crash_after(0);
	ds_store_close(s);
	_exit(0);
}

/*
 * N runs from 1 up until the children finish their work without reaching
 * their crash point, so every write step of the work is a crash point once,
 * however many steps the engine takes.
 */
#define P_MAX_POINTS 400

static void test_crash_during_put(void **state)
{
	struct fx *f = *state;
	struct ds_store_options o = {.chunk_size = CHUNK, .pack_size = MiB};
	size_t killed = 0, finished = 0;
	struct reports all = {0};
	uint8_t *got = malloc(CHUNK), *want = malloc(CHUNK);
	uint64_t x = 1;
	long n;

	assert_non_null(got);
	assert_non_null(want);
	assert_int_equal(ds_store_create(f->dir, &o), 0);
	for (n = 1; n <= P_MAX_POINTS && finished < 3; n++) {
		struct put_child pc = {.dir = f->dir, .n = n};
		size_t first = all.n;
		struct ds_store *s;
		int status;

		status = run_child(put_child_main, &pc, &all);
		/* The first put has at least one write step. */
		expect_status(status, n, n == 1);
		if (WIFSIGNALED(status)) {
			killed++;
			finished = 0;
		} else {
			finished++;
		}

		s = open_checked(f->dir, n);
		/* Everything this child reported, then a sample of older reports. */
		for (size_t k = first; k < all.n; k++) {
			struct spec sp = crash_spec(all.v[k].seed);
			expect_report(s, &all.v[k], &sp, got, want);
		}
		for (int k = 0; first > 0 && k < 32; k++) {
			const struct report *rep = &all.v[splitmix64(&x) % first];
			struct spec sp = crash_spec(rep->seed);
			expect_report(s, rep, &sp, got, want);
		}
		ds_store_close(s);
	}
	print_message("put: crash points 1..%ld, %zu children killed, %zu chunks reported\n",
		      n - 1, killed, all.n);
	assert_int_equal(finished, 3);
	assert_true(killed >= 20);

	/* At the end, every chunk ever reported. */
	{
		struct ds_store *s = open_checked(f->dir, -1);
		for (size_t k = 0; k < all.n; k++) {
			struct spec sp = crash_spec(all.v[k].seed);
			expect_report(s, &all.v[k], &sp, got, want);
		}
		ds_store_close(s);
	}
	free(all.v);
	free(got);
	free(want);
}

/* ---- part 2: crashes during GC -------------------------------------------------- */

#define G_A 16  /* live chunks per round, 4 KiB */
#define G_B 64  /* garbage chunks per round, 16 KiB: a pack per round */

struct gc_child {
	const char *dir;
	long n;
	uint64_t round;
};

static void gc_child_main(void *arg, int fd)
{
	struct gc_child *gcc = arg;
	struct report rep[G_A + G_B];
	ds_chunk_id live[G_A];
	struct ds_store *s;
	int na = 0;

	if (ds_store_open(gcc->dir, &s) != 0)
		_exit(10);
	memset(rep, 0, sizeof(rep));
	/* A and B mixed in every batch, so every pack holds live records. */
	for (int b = 0; b < 8; b++) {
		struct ds_chunk c[10];

		memset(c, 0, sizeof(c));
		for (int j = 0; j < 10; j++) {
			int i = b * 10 + j;
			bool a = j < 2;
			uint64_t seed = gcc->round << 32 | (uint64_t)i;
			struct spec sp = gc_spec(seed, a ? 4 * KiB : CHUNK);

			fill_chunk(&c[j], &sp);
			rep[i].seed = seed;
			rep[i].set = a ? SET_A : SET_B;
		}
		if (ds_store_put(s, c, 10) != 0)
			_exit(11);
		for (int j = 0; j < 10; j++) {
			rep[b * 10 + j].id = c[j].id;
			if (rep[b * 10 + j].set == SET_A)
				live[na++] = c[j].id;
			free(c[j].data);
		}
	}
	write_all(fd, rep, sizeof(rep));

	store_set_crash_after(gcc->n);
	if (ds_store_gc(s, live, (size_t)na, NULL) != 0)
		_exit(12);
	store_set_crash_after(0);
	ds_store_close(s);
	_exit(0);
}

#define G_MAX_POINTS 300

static void test_crash_during_gc(void **state)
{
	struct fx *f = *state;
	struct ds_store_options o = {.chunk_size = CHUNK, .pack_size = MiB};
	size_t killed = 0, finished = 0;
	uint8_t *got = malloc(CHUNK), *want = malloc(CHUNK);
	long n;

	assert_non_null(got);
	assert_non_null(want);
	assert_int_equal(ds_store_create(f->dir, &o), 0);
	for (n = 1; n <= G_MAX_POINTS && finished < 2; n++) {
		struct gc_child gcc = {.dir = f->dir, .n = n, .round = (uint64_t)n};
		struct reports rep = {0};
		ds_chunk_id live[G_A];
		struct ds_gc_stats gs;
		struct ds_store_stats st;
		struct ds_store *s;
		size_t na = 0;
		int status;

		status = run_child(gc_child_main, &gcc, &rep);
		/* The sweep's commit is a write step. */
		expect_status(status, n, n == 1);
		assert_int_equal(rep.n, G_A + G_B);
		if (WIFSIGNALED(status)) {
			killed++;
			finished = 0;
		} else {
			finished++;
		}

		s = open_checked(f->dir, n);
		for (size_t k = 0; k < rep.n; k++) {
			struct spec sp = gc_report_spec(&rep.v[k]);
			bool present;

			if (rep.v[k].set == SET_A) {
				live[na++] = rep.v[k].id;
				expect_report(s, &rep.v[k], &sp, got, want);
				continue;
			}
			/* A garbage chunk is either gone or whole. */
			assert_int_equal(ds_store_has(s, &rep.v[k].id, 1, &present), 0);
			if (present)
				expect_report(s, &rep.v[k], &sp, got, want);
		}

		/* GC completes after the crash and removes the rest. */
		if (ds_store_gc(s, live, na, &gs) != 0)
			fail_msg("gc after crash point %ld failed", n);
		assert_int_equal(ds_store_stats(s, &st), 0);
		assert_int_equal(st.chunks, G_A);
		for (size_t k = 0; k < rep.n; k++) {
			struct spec sp = gc_report_spec(&rep.v[k]);
			bool present;

			assert_int_equal(ds_store_has(s, &rep.v[k].id, 1, &present), 0);
			assert_int_equal(present, rep.v[k].set == SET_A);
			if (present)
				expect_report(s, &rep.v[k], &sp, got, want);
		}
		ds_store_close(s);
		s = open_checked(f->dir, n);
		ds_store_close(s);
		free(rep.v);
	}
	print_message("gc: crash points 1..%ld, %zu children killed during GC\n", n - 1, killed);
	assert_int_equal(finished, 2);
	assert_true(killed >= 5);
	free(got);
	free(want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_crash_during_put, setup, teardown),
		cmocka_unit_test_setup_teardown(test_crash_during_gc, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
