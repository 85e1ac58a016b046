/*
 * store_bench: chunk store put and get throughput next to the single-core
 * speed of LZ4 and keyed XXH3-128 on the same data and machine.
 *
 *   store_bench [--chunk-size N] [--threads T] [--runs R] [--batch B]
 *               [--store DIR] INPUT_FILE
 *
 * Notes on the design
 *
 * Data. The first 1 GiB (at most) of INPUT_FILE is read into memory and cut
 * into chunk-size pieces, the last one possibly short, exactly as a disk
 * image would be. Real data (bench/run-store-bench.sh uses a tar of
 * /usr/lib) matters: LZ4 speed and ratio depend on the bytes, and a tar
 * holds some duplicate and all-zero chunks, as a disk does.
 *
 * Each run measures, in this order:
 *   1. LZ4_compress_default of every chunk into one reused bound-sized
 *      buffer, one thread: the best case for the compressor, hence a strict
 *      baseline. LZ4_decompress_safe of every chunk's LZ4 output, and
 *      XXH3_128bits_withSecret with a random 192-byte secret (compiled with
 *      XXH_INLINE_ALL, as engine/chunk/chunk.c is, so it is the same code).
 *   2. The I/O floor: the LZ4 outputs of each batch of B chunks pwritten at
 *      the tail of one file and fdatasync'ed, one thread. No store can put
 *      with one sync per batch faster than this on this file system.
 *   3. Put: a new store (ds_store_create) in a fresh folder, so nothing of
 *      the input is in it beforehand and deduplication cannot fake speed
 *      (duplicates inside the input are deduplicated, as they would be in
 *      real use). T threads each take a contiguous share of the chunks and
 *      ds_store_put() them B at a time. The clock runs from the moment all
 *      threads are ready until the last put has returned, so it includes
 *      every fdatasync and commit: that is the real cost.
 *   4. Get: the same T threads ds_store_get() their chunks B at a time and
 *      compare the bytes with the input. Only the time inside
 *      ds_store_get() counts (the slowest thread's sum), not the compare.
 *      Pack pages are still in the page cache, so this is the CPU cost of
 *      lookup, read, checksum, decompress and re-hash, not a disk read.
 * Every figure is MB/s (10^6 bytes) of input bytes, and the median of the
 * R runs is reported. The store is removed after each run.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <sys/resource.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lz4.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <dsnap/store.h>

#define INPUT_CAP (1ull << 30)
#define SECRET_SIZE 192
#define MAX_RUNS 99
#define MAX_THREADS 256

struct opts {
	uint32_t chunk_size;
	unsigned threads;
	unsigned runs;
	unsigned batch;
	bool add;
	const char *store_base;
	const char *input;
};

/* The input cut into chunks. */
struct input {
	uint8_t *data;
	uint64_t size;
	uint32_t chunk_size;
	size_t nchunks;
	/* LZ4 output of each chunk, back to back (for decompression and I/O floor). */
	uint8_t *lz4;
	uint64_t *lz4_off; /* nchunks + 1 offsets into lz4 */
	uint64_t lz4_stored; /* sum of min(LZ4 size, raw size): what the store would keep */
	size_t zero_chunks;
};

struct figures {
	double lz4c, lz4d, xxh3, io_floor, put, get;
	double put_cpu, put_cores; /* CPU seconds of the put phase, and CPU / wall */
	struct ds_store_stats stats;
	uint64_t stored_now; /* chunks the put reported as written */
};

/* ---- small helpers -------------------------------------------------------- */

static void die(const char *what, int err)
{
	fprintf(stderr, "store_bench: %s: %s\n", what, strerror(err < 0 ? -err : err));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double mbps(uint64_t bytes, double seconds)
{
	return seconds > 0 ? (double)bytes / seconds / 1e6 : 0;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("malloc", ENOMEM);
	return p;
}

static uint32_t chunk_len(const struct input *in, size_t i)
{
	uint64_t off = (uint64_t)i * in->chunk_size;

	return (uint32_t)(in->size - off < in->chunk_size ? in->size - off : in->chunk_size);
}

static const uint8_t *chunk_ptr(const struct input *in, size_t i)
{
	return in->data + (uint64_t)i * in->chunk_size;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	if (remove(path) < 0)
		fprintf(stderr, "store_bench: cannot remove %s: %s\n", path, strerror(errno));
	return 0;
}

static void rm_tree(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static bool parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || s[0] == '-')
		return false;
	if (*end == 'k' || *end == 'K')
		v <<= 10, end++;
	else if (*end == 'm' || *end == 'M')
		v <<= 20, end++;
	if (*end)
		return false;
	*out = v;
	return true;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: store_bench [--chunk-size N] [--threads T] [--runs R] [--batch B]\n"
		"                   [--store DIR] INPUT_FILE\n"
		"  --chunk-size N  store chunk size in bytes (k/M suffix; default %u)\n"
		"  --threads T     putting and getting threads (default 1)\n"
		"  --runs R        runs, each with a new store; medians are printed (default 3)\n"
		"  --batch B       chunks per ds_store_put/get call (default 64)\n"
		"  --store DIR     folder for the temporary stores (default $TMPDIR or /tmp)\n"
		"  --add           ds_store_add each batch and ds_store_flush once at the end\n"
		"                  (how the copier stores a disk) instead of ds_store_put\n"
		"Reads at most the first 1 GiB of INPUT_FILE.\n",
		DS_CHUNK_SIZE_DEFAULT);
	exit(2);
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
	o->chunk_size = DS_CHUNK_SIZE_DEFAULT;
	o->threads = 1;
	o->runs = 3;
	o->batch = 64;
	o->add = false;
	o->store_base = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	o->input = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		uint64_t v;

		if (strcmp(a, "--add") == 0) {
			o->add = true;
			continue;
		}
		if (strcmp(a, "--store") == 0 && i + 1 < argc) {
			o->store_base = argv[++i];
			continue;
		}
		if (a[0] != '-') {
			if (o->input)
				usage();
			o->input = a;
			continue;
		}
		if (i + 1 >= argc || !parse_u64(argv[i + 1], &v))
			usage();
		i++;
		if (strcmp(a, "--chunk-size") == 0 && v <= UINT32_MAX)
			o->chunk_size = (uint32_t)v;
		else if (strcmp(a, "--threads") == 0 && v >= 1 && v <= MAX_THREADS)
			o->threads = (unsigned)v;
		else if (strcmp(a, "--runs") == 0 && v >= 1 && v <= MAX_RUNS)
			o->runs = (unsigned)v;
		else if (strcmp(a, "--batch") == 0 && v >= 1 && v <= 1u << 20)
			o->batch = (unsigned)v;
		else
			usage();
	}
	if (!o->input)
		usage();
	if (o->chunk_size < DS_CHUNK_SIZE_MIN || o->chunk_size > DS_CHUNK_SIZE_MAX ||
	    (o->chunk_size & (o->chunk_size - 1))) {
		fprintf(stderr, "store_bench: chunk size must be a power of two in %u..%u\n",
			DS_CHUNK_SIZE_MIN, DS_CHUNK_SIZE_MAX);
		exit(2);
	}
}

/* ---- input ------------------------------------------------------------------ */

static void read_input(const char *path, uint32_t chunk_size, struct input *in)
{
	struct stat sb;
	uint64_t cap, got = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || fstat(fd, &sb) < 0)
		die(path, errno);
	if (!S_ISREG(sb.st_mode) || sb.st_size == 0) {
		fprintf(stderr, "store_bench: %s is not a non-empty regular file\n", path);
		exit(1);
	}
	cap = (uint64_t)sb.st_size < INPUT_CAP ? (uint64_t)sb.st_size : INPUT_CAP;
	in->data = xmalloc(cap);
	while (got < cap) {
		ssize_t r = read(fd, in->data + got, cap - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die(path, errno);
		if (r == 0)
			break;
		got += (uint64_t)r;
	}
	close(fd);
	in->size = got;
	in->chunk_size = chunk_size;
	in->nchunks = (size_t)((got + chunk_size - 1) / chunk_size);

	/* The LZ4 output of every chunk, kept for the decompression and I/O
	 * floor measurements. Not timed. */
	in->lz4_off = xmalloc((in->nchunks + 1) * sizeof(*in->lz4_off));
	in->lz4 = xmalloc(in->nchunks * (uint64_t)LZ4_compressBound((int)chunk_size));
	in->lz4_off[0] = 0;
	in->lz4_stored = 0;
	in->zero_chunks = 0;
	for (size_t i = 0; i < in->nchunks; i++) {
		uint32_t len = chunk_len(in, i);
		int n = LZ4_compress_default((const char *)chunk_ptr(in, i),
					     (char *)in->lz4 + in->lz4_off[i], (int)len,
					     LZ4_compressBound((int)len));
		if (n <= 0)
			die("LZ4_compress_default", EIO);
		in->lz4_off[i + 1] = in->lz4_off[i] + (uint64_t)n;
		if (all_zero(chunk_ptr(in, i), len))
			in->zero_chunks++;
		else
			in->lz4_stored += (uint64_t)n < len ? (uint64_t)n : len;
	}
}

/* ---- single-core baselines -------------------------------------------------- */

static double bench_lz4_compress(const struct input *in)
{
	int bound = LZ4_compressBound((int)in->chunk_size);
	char *dst = xmalloc((size_t)bound);
	double t0 = now();

	for (size_t i = 0; i < in->nchunks; i++) {
		uint32_t len = chunk_len(in, i);
		if (LZ4_compress_default((const char *)chunk_ptr(in, i), dst, (int)len, bound) <= 0)
			die("LZ4_compress_default", EIO);
	}
	t0 = now() - t0;
	free(dst);
	return mbps(in->size, t0);
}

static double bench_lz4_decompress(const struct input *in)
{
	char *dst = xmalloc(in->chunk_size);
	double t0 = now();

	for (size_t i = 0; i < in->nchunks; i++) {
		uint32_t len = chunk_len(in, i);
		int n = LZ4_decompress_safe((const char *)in->lz4 + in->lz4_off[i], dst,
					    (int)(in->lz4_off[i + 1] - in->lz4_off[i]), (int)len);
		if (n != (int)len)
			die("LZ4_decompress_safe", EBADMSG);
	}
	t0 = now() - t0;
	free(dst);
	return mbps(in->size, t0);
}

static double bench_xxh3(const struct input *in, const uint8_t secret[SECRET_SIZE])
{
	volatile uint64_t sink = 0;
	uint64_t acc = 0;
	double t0 = now();

	for (size_t i = 0; i < in->nchunks; i++) {
		XXH128_hash_t h = XXH3_128bits_withSecret(chunk_ptr(in, i), chunk_len(in, i),
							  secret, SECRET_SIZE);
		acc ^= h.low64 ^ h.high64;
	}
	t0 = now() - t0;
	sink = acc;
	(void)sink;
	return mbps(in->size, t0);
}

/* The LZ4 output of each batch appended and fdatasync'ed, like a put would. */
static double bench_io_floor(const struct input *in, const char *dir, unsigned batch)
{
	char path[4096];
	uint64_t tail = 0;
	double t0;
	int fd;

	if (snprintf(path, sizeof(path), "%s/io-floor", dir) >= (int)sizeof(path))
		die(dir, ENAMETOOLONG);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		die(path, errno);
	t0 = now();
	for (size_t i = 0; i < in->nchunks; i += batch) {
		size_t end = i + batch < in->nchunks ? i + batch : in->nchunks;
		const uint8_t *p = in->lz4 + in->lz4_off[i];
		uint64_t len = in->lz4_off[end] - in->lz4_off[i];

		while (len > 0) {
			ssize_t r = pwrite(fd, p, len, (off_t)tail);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				die("pwrite", errno);
			p += r;
			len -= (uint64_t)r;
			tail += (uint64_t)r;
		}
		if (fdatasync(fd) < 0)
			die("fdatasync", errno);
	}
	t0 = now() - t0;
	close(fd);
	unlink(path);
	return mbps(in->size, t0);
}

/* ---- store put and get ------------------------------------------------------ */

struct worker {
	pthread_t tid;
	struct ds_store *store;
	const struct input *in;
	ds_chunk_id *ids; /* ids[i] of chunk i, filled by put, used by get */
	size_t first, end;
	unsigned batch;
	bool get;
	bool add; /* ds_store_add per batch and one ds_store_flush at the end */
	pthread_barrier_t *start;
	/* out */
	uint64_t stored;
	double get_seconds;
	size_t mismatches;
	int err;
};

static void worker_put(struct worker *w, struct ds_chunk *c)
{
	for (size_t i = w->first; i < w->end && !w->err; i += w->batch) {
		size_t n = i + w->batch < w->end ? w->batch : w->end - i;

		for (size_t k = 0; k < n; k++) {
			memset(&c[k], 0, sizeof(c[k]));
			c[k].data = (void *)(uintptr_t)chunk_ptr(w->in, i + k);
			c[k].len = chunk_len(w->in, i + k);
		}
		w->err = w->add ? ds_store_add(w->store, c, n) : ds_store_put(w->store, c, n);
		for (size_t k = 0; k < n && !w->err; k++) {
			w->ids[i + k] = c[k].id;
			w->stored += c[k].stored;
		}
	}
	if (w->add && !w->err)
		w->err = ds_store_flush(w->store);
}

static void worker_get(struct worker *w, struct ds_chunk *c, uint8_t *buf)
{
	uint32_t cs = w->in->chunk_size;

	for (size_t i = w->first; i < w->end && !w->err; i += w->batch) {
		size_t n = i + w->batch < w->end ? w->batch : w->end - i;
		double t0;

		for (size_t k = 0; k < n; k++) {
			memset(&c[k], 0, sizeof(c[k]));
			c[k].id = w->ids[i + k];
			c[k].data = buf + k * (size_t)cs;
		}
		t0 = now();
		w->err = ds_store_get(w->store, c, n);
		w->get_seconds += now() - t0;
		for (size_t k = 0; k < n && !w->err; k++) {
			uint32_t len = chunk_len(w->in, i + k);
			/* The zero id reads back as chunk_size zero bytes,
			 * even for a short last chunk. */
			bool len_ok = c[k].len == len ||
				      (ds_chunk_id_is_zero(&c[k].id) && c[k].len == cs);
			if (!len_ok || memcmp(c[k].data, chunk_ptr(w->in, i + k), len) != 0)
				w->mismatches++;
		}
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct ds_chunk *c = xmalloc(w->batch * sizeof(*c));
	uint8_t *buf = w->get ? xmalloc((size_t)w->batch * w->in->chunk_size) : NULL;

	if (buf) /* fault the pages in before the clock starts */
		memset(buf, 0, (size_t)w->batch * w->in->chunk_size);
	pthread_barrier_wait(w->start);
	if (w->get)
		worker_get(w, c, buf);
	else
		worker_put(w, c);
	free(buf);
	free(c);
	return NULL;
}

static double cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Runs put (get = false) or get with T threads; returns the wall time and
 * the CPU time the process used meanwhile (*cpu). */
static double run_workers(struct worker *ws, unsigned nt, bool get, double *cpu)
{
	pthread_barrier_t start;
	double t0, c0;
	int r;

	pthread_barrier_init(&start, NULL, nt + 1);
	for (unsigned t = 0; t < nt; t++) {
		ws[t].get = get;
		ws[t].start = &start;
		ws[t].err = 0;
		r = pthread_create(&ws[t].tid, NULL, worker_main, &ws[t]);
		if (r)
			die("pthread_create", r);
	}
	pthread_barrier_wait(&start);
	c0 = cpu_seconds();
	t0 = now();
	for (unsigned t = 0; t < nt; t++)
		pthread_join(ws[t].tid, NULL);
	t0 = now() - t0;
	if (cpu)
		*cpu = cpu_seconds() - c0;
	pthread_barrier_destroy(&start);
	for (unsigned t = 0; t < nt; t++)
		if (ws[t].err)
			die(get ? "ds_store_get" : "ds_store_put", ws[t].err);
	return t0;
}

static void bench_store(const struct input *in, const struct opts *o, const char *dir,
			struct figures *f)
{
	struct ds_store_options so = { .chunk_size = o->chunk_size };
	struct worker ws[MAX_THREADS];
	struct ds_store *s;
	ds_chunk_id *ids = xmalloc(in->nchunks * sizeof(*ids));
	char path[4096];
	double put_s, get_s = 0;
	size_t bad = 0;
	int r;

	if (snprintf(path, sizeof(path), "%s/store", dir) >= (int)sizeof(path))
		die(dir, ENAMETOOLONG);
	r = ds_store_create(path, &so);
	if (r < 0)
		die("ds_store_create", r);
	r = ds_store_open(path, &s);
	if (r < 0)
		die("ds_store_open", r);

	memset(ws, 0, sizeof(ws));
	for (unsigned t = 0; t < o->threads; t++) {
		ws[t].store = s;
		ws[t].in = in;
		ws[t].ids = ids;
		ws[t].first = in->nchunks * t / o->threads;
		ws[t].end = in->nchunks * (t + 1) / o->threads;
		ws[t].batch = o->batch;
		ws[t].add = o->add;
	}
	put_s = run_workers(ws, o->threads, false, &f->put_cpu);
	f->put = mbps(in->size, put_s);
	f->put_cores = f->put_cpu / put_s;
	f->stored_now = 0;
	for (unsigned t = 0; t < o->threads; t++)
		f->stored_now += ws[t].stored;
	r = ds_store_stats(s, &f->stats);
	if (r < 0)
		die("ds_store_stats", r);

	run_workers(ws, o->threads, true, NULL);
	for (unsigned t = 0; t < o->threads; t++) {
		if (ws[t].get_seconds > get_s)
			get_s = ws[t].get_seconds;
		bad += ws[t].mismatches;
	}
	if (bad) {
		fprintf(stderr, "store_bench: %zu chunks read back differ from the input\n", bad);
		exit(1);
	}
	f->get = mbps(in->size, get_s);

	ds_store_close(s);
	rm_tree(path);
	free(ids);
}

/* ---- main ------------------------------------------------------------------- */

static const char *xxh3_vector_name(void)
{
	switch (XXH_VECTOR) {
	case XXH_SCALAR:
		return "scalar";
	case XXH_SSE2:
		return "SSE2";
	case XXH_AVX2:
		return "AVX2";
	case XXH_AVX512:
		return "AVX-512";
	default:
		return "other";
	}
}

int main(int argc, char **argv)
{
	struct opts o;
	struct input in;
	struct figures f[MAX_RUNS];
	double v[MAX_RUNS], lz4c, lz4d, xxh3, io, put, get, ratio, cores;
	uint8_t secret[SECRET_SIZE];
	char dir[4096];
	long nproc = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned used;

	parse_opts(argc, argv, &o);
	used = nproc > 0 && (unsigned)nproc < o.threads ? (unsigned)nproc : o.threads;
	if (getrandom(secret, sizeof(secret), 0) != (ssize_t)sizeof(secret))
		die("getrandom", errno);
	read_input(o.input, o.chunk_size, &in);
	if (snprintf(dir, sizeof(dir), "%s/dsnap-store-bench.XXXXXX", o.store_base) >=
	    (int)sizeof(dir))
		die(o.store_base, ENAMETOOLONG);
	if (!mkdtemp(dir))
		die(dir, errno);

	printf("input: %s, %" PRIu64 " bytes (%.1f MiB), %zu chunks of %u bytes, %zu all-zero\n",
	       o.input, in.size, (double)in.size / (1 << 20), in.nchunks, in.chunk_size,
	       in.zero_chunks);
	printf("mode %s, threads %u (nproc %ld, used %u), batch %u chunks, runs %u, stores in %s\n",
	       o.add ? "add+flush" : "put",
	       o.threads, nproc, used, o.batch, o.runs, dir);
	printf("XXH3 code path: %s (XXH_INLINE_ALL, as in the engine)\n", xxh3_vector_name());
	printf("MB/s = 10^6 bytes of input per second\n\n");
	printf("%4s %10s %10s %10s %10s %10s %10s\n", "run", "lz4-comp", "lz4-dec", "xxh3-128",
	       "io-floor", "put", "get");
	fflush(stdout);
	for (unsigned i = 0; i < o.runs; i++) {
		f[i].lz4c = bench_lz4_compress(&in);
		f[i].lz4d = bench_lz4_decompress(&in);
		f[i].xxh3 = bench_xxh3(&in, secret);
		f[i].io_floor = bench_io_floor(&in, dir, o.batch);
		bench_store(&in, &o, dir, &f[i]);
		printf("%4u %10.0f %10.0f %10.0f %10.0f %10.0f %10.0f\n", i + 1, f[i].lz4c,
		       f[i].lz4d, f[i].xxh3, f[i].io_floor, f[i].put, f[i].get);
		fflush(stdout);
	}
	rm_tree(dir);

#define MEDIAN(field)                                  \
	({                                             \
		for (unsigned i_ = 0; i_ < o.runs; i_++) \
			v[i_] = f[i_].field;           \
		median(v, o.runs);                     \
	})
	lz4c = MEDIAN(lz4c);
	lz4d = MEDIAN(lz4d);
	xxh3 = MEDIAN(xxh3);
	io = MEDIAN(io_floor);
	put = MEDIAN(put);
	get = MEDIAN(get);
#undef MEDIAN

	printf("\nmedian of %u runs                           MB/s\n", o.runs);
	printf("  LZ4 compress, 1 core                 %10.0f\n", lz4c);
	printf("  LZ4 decompress, 1 core               %10.0f\n", lz4d);
	printf("  XXH3-128 keyed, 1 core               %10.0f\n", xxh3);
	printf("  pack write + fdatasync floor, 1 thr  %10.0f\n", io);
	printf("  store put, %3u thread(s)             %10.0f\n", o.threads, put);
	printf("  store get (verified), %3u thread(s)  %10.0f\n", o.threads, get);

	/* Store contents are the same every run; print the last one. */
	{
		const struct ds_store_stats *st = &f[o.runs - 1].stats;
		printf("\nstore: %" PRIu64 " chunks (%" PRIu64 " written by put), %.1f MiB raw, "
		       "%.1f MiB in records, %.1f MiB of packs\n",
		       st->chunks, f[o.runs - 1].stored_now, (double)st->raw_bytes / (1 << 20),
		       (double)st->stored_bytes / (1 << 20), (double)st->pack_bytes / (1 << 20));
		printf("ratio: input / records %.2f; unique raw / records %.2f; "
		       "LZ4 of all non-zero chunks %.2f\n",
		       st->stored_bytes ? (double)in.size / (double)st->stored_bytes : 0,
		       st->stored_bytes ? (double)st->raw_bytes / (double)st->stored_bytes : 0,
		       in.lz4_stored ? (double)(in.size) / (double)in.lz4_stored : 0);
	}

	for (unsigned i = 0; i < o.runs; i++)
		v[i] = f[i].put_cores;
	cores = median(v, o.runs);
	ratio = lz4c > 0 ? put / (used * lz4c) : 0;
	printf("\nput / (%u x LZ4 1-core) = %.2f   (threads' cores)\n", used, ratio);
	ratio = lz4c > 0 && cores > 0 ? put / (cores * lz4c) : 0;
	printf("cores used by put (process CPU time / wall time) = %.2f\n", cores);
	printf("put / (%.2f x LZ4 1-core) = %.2f   target >= 0.80 per core used: %s\n", cores,
	       ratio, ratio >= 0.80 ? "met" : "not met");
	free(in.data);
	free(in.lz4);
	free(in.lz4_off);
	return 0;
}
