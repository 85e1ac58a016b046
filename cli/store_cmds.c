/*
 * dsnap store …: commands on a bare chunk store, without catalog or daemon
 * (quick start, maintenance). Snapshot ids here are manifest ids.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#include <dsnap/snapshot.h>
#include <dsnap/store.h>

#include "cli.h"

static const char *store_dir;
static bool quiet;

static int fail(int err, const char *what)
{
	fprintf(stderr, "dsnap: %s: %s\n", what, strerror(-err));
	return EXIT_FAIL;
}

/* mkdir -p of path's parents, so the default store folder can be made. */
void make_parents(const char *path)
{
	char tmp[PATH_MAX];

	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		mkdir(tmp, 0755);
		*p = '/';
	}
}

int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	{
		unsigned shift = 0;
		switch (*end) {
		case 'k': case 'K': shift = 10; end++; break;
		case 'm': case 'M': shift = 20; end++; break;
		case 'g': case 'G': shift = 30; end++; break;
		default: break;
		}
		if (shift && v > (~0ull >> shift))
			return -ERANGE;
		v <<= shift;
	}
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end == 'B')
		end++;
	if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int open_store(struct ds_store **s)
{
	int r = ds_store_open(store_dir, s);

	if (r == -ENOENT)
		fprintf(stderr, "dsnap: no store at %s (run: dsnap store init)\n", store_dir);
	else if (r < 0)
		fprintf(stderr, "dsnap: cannot open store %s: %s\n", store_dir, strerror(-r));
	return r;
}

static void progress(uint64_t done, uint64_t total, void *opaque)
{
	static time_t last;
	time_t now = time(NULL);

	if (quiet || !isatty(STDERR_FILENO) || (now == last && done < total))
		return;
	last = now;
	fprintf(stderr, "\r%s %3d%%  %llu / %llu MiB", (const char *)opaque,
		total ? (int)(done * 100 / total) : 100, (unsigned long long)(done >> 20),
		(unsigned long long)(total >> 20));
	if (done >= total)
		fputc('\n', stderr);
}

static int cmd_init(int argc, char **argv)
{
	static const struct option opts[] = {{"chunk-size", required_argument, NULL, 'c'},
					      {NULL, 0, NULL, 0}};
	struct ds_store_options o = {0};
	uint64_t v;
	int c, r;

	while ((c = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
		if (c != 'c' || parse_size(optarg, &v) < 0 || v > UINT32_MAX) {
			fprintf(stderr, "dsnap: store init: bad --chunk-size\n");
			return EXIT_USAGE;
		}
		o.chunk_size = (uint32_t)v;
	}
	make_parents(store_dir);
	r = ds_store_create(store_dir, &o);
	if (r == -EINVAL) {
		fprintf(stderr, "dsnap: chunk size must be a power of two from 16K to 4M\n");
		return EXIT_USAGE;
	}
	if (r == -EEXIST) {
		fprintf(stderr, "dsnap: a store already exists at %s\n", store_dir);
		return EXIT_FAIL;
	}
	if (r < 0)
		return fail(r, store_dir);
	if (!quiet)
		printf("created store %s (chunk size %u KiB)\n", store_dir,
		       (o.chunk_size ? o.chunk_size : DS_CHUNK_SIZE_DEFAULT) >> 10);
	return 0;
}

/*
 * Opens what is to be copied so that it cannot change under the copy: a
 * block device with O_EXCL (fails while mounted or held by someone else),
 * a regular file with a read lease (fails while anyone has it open for
 * writing; an open for writing during the copy breaks the lease, which is
 * checked at the end).
 */
static int open_source(const char *path, uint64_t *size, bool *leased)
{
	struct stat st;
	int fd;

	*leased = false;
	if (stat(path, &st) < 0)
		return -errno;
	if (S_ISBLK(st.st_mode)) {
		fd = open(path, O_RDONLY | O_EXCL | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		if (ioctl(fd, BLKGETSIZE64, size) < 0) {
			int r = -errno;
			close(fd);
			return r;
		}
		return fd;
	}
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	/* A lease break is noticed by polling F_GETLEASE, not by SIGIO. */
	signal(SIGIO, SIG_IGN);
	if (fcntl(fd, F_SETLEASE, F_RDLCK) < 0) {
		int r = errno == EAGAIN ? -EBUSY : -errno;
		close(fd);
		return r;
	}
	*leased = true;
	if (fstat(fd, &st) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	*size = (uint64_t)st.st_size;
	return fd;
}

static int cmd_snapshot(int argc, char **argv)
{
	struct ds_store *s = NULL;
	char hex[DS_CHUNK_ID_HEX];
	ds_chunk_id root;
	uint64_t size;
	bool leased;
	int fd, r;

	if (argc != 2) {
		fprintf(stderr, "dsnap store: wrong arguments; see dsnap --help\n");
		return EXIT_USAGE;
	}
	fd = open_source(argv[1], &size, &leased);
	if (fd == -EBUSY) {
		fprintf(stderr, "dsnap: %s is in use (mounted, or open for writing): "
				"a snapshot of it could change under the copy\n", argv[1]);
		return EXIT_FAIL;
	}
	if (fd == -EINVAL) {
		fprintf(stderr, "dsnap: %s is neither a regular file nor a block device\n",
			argv[1]);
		return EXIT_FAIL;
	}
	if (fd < 0)
		return fail(fd, argv[1]);
	if (open_store(&s) < 0) {
		close(fd);
		return EXIT_FAIL;
	}
	r = ds_image_backup(s, fd, size, &root, progress, "snapshot");
	if (r == 0 && leased && fcntl(fd, F_GETLEASE) != F_RDLCK) {
		fprintf(stderr, "dsnap: %s was opened for writing during the copy; "
				"snapshot discarded\n", argv[1]);
		r = -EBUSY;
	}
	close(fd);
	ds_store_close(s);
	if (r == -EBUSY)
		return EXIT_FAIL;
	if (r < 0)
		return fail(r, argv[1]);
	ds_chunk_id_to_hex(&root, hex);
	printf("%s\n", hex);
	return 0;
}

static int cmd_restore(int argc, char **argv)
{
	struct ds_store *s = NULL;
	ds_chunk_id root;
	int fd, r;

	if (argc != 3) {
		fprintf(stderr, "dsnap store: wrong arguments; see dsnap --help\n");
		return EXIT_USAGE;
	}
	if (ds_chunk_id_from_hex(argv[1], &root) < 0) {
		fprintf(stderr, "dsnap: %s is not a snapshot id (32 hex digits)\n", argv[1]);
		return EXIT_USAGE;
	}
	if (open_store(&s) < 0)
		return EXIT_FAIL;
	fd = open(argv[2], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = -errno;
		ds_store_close(s);
		return fail(r, argv[2]);
	}
	r = ds_image_restore(s, &root, fd, progress, "restore");
	close(fd);
	ds_store_close(s);
	if (r < 0) {
		unlink(argv[2]);
		if (r == -ENOENT) {
			fprintf(stderr, "dsnap: no snapshot %s in this store\n", argv[1]);
			return EXIT_FAIL;
		}
		return fail(r, "restore");
	}
	if (!quiet)
		printf("restored %s to %s\n", argv[1], argv[2]);
	return 0;
}

static void report_bad(const ds_chunk_id *id, int err, void *opaque)
{
	char hex[DS_CHUNK_ID_HEX];

	ds_chunk_id_to_hex(id, hex);
	printf("bad chunk %s: %s\n", hex, strerror(-err));
}

static int cmd_verify(void)
{
	struct ds_store *s;
	int64_t bad;

	if (open_store(&s) < 0)
		return EXIT_FAIL;
	bad = ds_store_verify(s, report_bad, NULL);
	ds_store_close(s);
	if (bad < 0)
		return fail((int)bad, "verify");
	printf("%lld bad chunks\n", (long long)bad);
	return bad ? EXIT_DAMAGE : 0;
}

static int cmd_stats(void)
{
	struct ds_store_stats st;
	struct ds_store *s;
	int r;

	if (open_store(&s) < 0)
		return EXIT_FAIL;
	r = ds_store_stats(s, &st);
	printf("chunk size    %u KiB\n", ds_store_chunk_size(s) >> 10);
	ds_store_close(s);
	if (r < 0)
		return fail(r, "stats");
	printf("chunks        %llu\n"
	       "raw bytes     %llu\n"
	       "stored bytes  %llu\n"
	       "packs         %llu (%llu bytes)\n",
	       (unsigned long long)st.chunks, (unsigned long long)st.raw_bytes,
	       (unsigned long long)st.stored_bytes, (unsigned long long)st.packs,
	       (unsigned long long)st.pack_bytes);
	return 0;
}

static int cmd_gc(int argc, char **argv)
{
	static const struct option opts[] = {{"keep", required_argument, NULL, 'k'},
					      {"keep-none", no_argument, NULL, 'n'},
					      {NULL, 0, NULL, 0}};
	ds_chunk_id *keep = calloc((size_t)argc, sizeof(*keep)), *live = NULL;
	size_t nkeep = 0, n = 0, cap = 0;
	struct ds_gc_stats st;
	struct ds_store *s;
	bool none = false;
	int c, r = 0;

	if (!keep)
		return fail(-ENOMEM, "gc");
	while ((c = getopt_long(argc, argv, "k:n", opts, NULL)) != -1) {
		if (c == 'k' && ds_chunk_id_from_hex(optarg, &keep[nkeep]) == 0) {
			nkeep++;
		} else if (c == 'n') {
			none = true;
		} else {
			fprintf(stderr, "dsnap: store gc: bad option or snapshot id\n");
			free(keep);
			return EXIT_USAGE;
		}
	}
	if (nkeep == 0 && !none) {
		fprintf(stderr, "dsnap: store gc needs --keep ID for each snapshot to keep "
				"(or --keep-none to empty the store)\n");
		free(keep);
		return EXIT_USAGE;
	}
	if (open_store(&s) < 0) {
		free(keep);
		return EXIT_FAIL;
	}
	/* A kept snapshot that cannot be read whole aborts GC: better keep
	 * garbage than drop a chunk someone needs. */
	for (size_t i = 0; i < nkeep && r == 0; i++)
		r = ds_manifest_refs(s, &keep[i], &live, &n, &cap);
	if (r == 0)
		r = ds_store_gc(s, live, n, &st);
	ds_store_close(s);
	free(keep);
	free(live);
	if (r < 0)
		return fail(r, "gc");
	printf("removed %llu chunks, rewrote %llu packs, freed %llu bytes\n",
	       (unsigned long long)st.chunks_removed, (unsigned long long)st.packs_rewritten,
	       (unsigned long long)st.bytes_freed);
	return 0;
}


int store_main(int argc, char **argv, const char *dir, bool be_quiet)
{
	const char *cmd = argv[0];

	store_dir = dir;
	quiet = be_quiet;
	optind = 1;
	if (strcmp(cmd, "init") == 0)
		return cmd_init(argc, argv);
	if (strcmp(cmd, "snapshot") == 0)
		return cmd_snapshot(argc, argv);
	if (strcmp(cmd, "restore") == 0)
		return cmd_restore(argc, argv);
	if (strcmp(cmd, "verify") == 0 && argc == 1)
		return cmd_verify();
	if (strcmp(cmd, "stats") == 0 && argc == 1)
		return cmd_stats();
	if (strcmp(cmd, "gc") == 0)
		return cmd_gc(argc, argv);
	fprintf(stderr, "dsnap store: unknown command; see dsnap --help\n");
	return EXIT_USAGE;
}
