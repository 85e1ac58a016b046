/*
 * dsnap: the command-line client.
 *
 * `dsnap store …` works on a local store directly, with no daemon: it is
 * the quick start and the maintenance path. Exit codes: 0 success,
 * 1 the operation failed, 2 bad usage, 3 damage found (verify).
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

#include <dsnap/engine.h>
#include <dsnap/snapshot.h>
#include <dsnap/store.h>

enum { EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_DAMAGE = 3 };

static const char *store_dir;
static bool quiet;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsnap [--state DIR] [--quiet] COMMAND [OPTIONS]\n"
		"       dsnap [--store DIR] [--quiet] store COMMAND [ARGS]\n"
		"\n"
		"Disks and snapshots (run in this process on the state folder):\n"
		"  register-disk --path PATH [--disk-name NAME]\n"
		"                                   adopt an image file or block device as a disk\n"
		"  create-disk --size SIZE [--disk-name NAME]\n"
		"  create-disk --snapshot-id ID [--disk-name NAME]\n"
		"                                   a new image file in the state folder\n"
		"  describe-disks [--disk-id ID]\n"
		"  delete-disk --disk-id ID\n"
		"  create-snapshot --disk-id ID [--snapshot-name NAME] [--description TEXT]\n"
		"                  [--retention-days N]\n"
		"                                   snapshot a disk that is not in use, and wait\n"
		"  describe-snapshots [--disk-id ID] [--snapshot-id ID]\n"
		"  delete-snapshot --snapshot-id ID\n"
		"  reset-disk --disk-id ID --snapshot-id ID\n"
		"                                   write a snapshot back onto its disk\n"
		"  export-snapshot --snapshot-id ID --path NEW-FILE\n"
		"  verify-snapshot --snapshot-id ID\n"
		"  gc                               free chunks no snapshot uses\n"
		"\n"
		"Store commands (no catalog; snapshot ids are manifest ids):\n"
		"  store init [--chunk-size SIZE]   create the store (SIZE: 16K..4M, default 64K)\n"
		"  store snapshot IMAGE             copy an idle image file or unused block device\n"
		"                                   into the store; prints the snapshot id\n"
		"  store restore ID OUTPUT          write snapshot ID to a new file OUTPUT\n"
		"  store verify                     read and check every chunk\n"
		"  store stats                      chunk count and sizes\n"
		"  store gc --keep ID... | --keep-none\n"
		"                                   drop every chunk the kept snapshots do not use\n"
		"\n"
		"The state folder is DIR, else $DSNAP_STATE, else $XDG_DATA_HOME/dsnap\n"
		"(~/.local/share/dsnap); the store is its store/ folder unless --store or\n"
		"$DSNAP_STORE says otherwise.\n"
		"Exit codes: 0 ok, 1 failed, 2 bad usage, 3 damage found.\n");
}

static int fail(int err, const char *what)
{
	fprintf(stderr, "dsnap: %s: %s\n", what, strerror(-err));
	return EXIT_FAIL;
}

static const char *state_dir;

static const char *default_state(void)
{
	static char buf[PATH_MAX];
	const char *env = getenv("DSNAP_STATE"), *xdg = getenv("XDG_DATA_HOME"),
		   *home = getenv("HOME");

	if (env && *env)
		return env;
	if (xdg && *xdg)
		snprintf(buf, sizeof(buf), "%s/dsnap", xdg);
	else
		snprintf(buf, sizeof(buf), "%s/.local/share/dsnap", home ? home : ".");
	return buf;
}

static const char *default_store(void)
{
	static char buf[PATH_MAX + 8];
	const char *env = getenv("DSNAP_STORE");

	if (env && *env)
		return env;
	snprintf(buf, sizeof(buf), "%s/store", state_dir);
	return buf;
}

/* mkdir -p of path's parents, so the default store folder can be made. */
static void make_parents(const char *path)
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

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	default: break;
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
		usage(stderr);
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
		usage(stderr);
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

/* ---- disks and snapshots ------------------------------------------------ */

/*
 * Flags of the form --name VALUE, each allowed at most once. Fills vals[i]
 * for names[i]; returns 0, or prints the problem and returns -1.
 */
static int parse_flags(const char *cmd, int argc, char **argv, const char *const *names,
		       const char **vals)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		int k = -1;

		if (strncmp(a, "--", 2) == 0)
			for (int n = 0; names[n]; n++)
				if (strcmp(a + 2, names[n]) == 0)
					k = n;
		if (k < 0) {
			fprintf(stderr, "dsnap %s: unknown argument %s\n", cmd, a);
			return -1;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "dsnap %s: %s needs a value\n", cmd, a);
			return -1;
		}
		if (vals[k]) {
			fprintf(stderr, "dsnap %s: %s given twice\n", cmd, a);
			return -1;
		}
		vals[k] = argv[++i];
	}
	return 0;
}

static int need_flag(const char *cmd, const char *name, const char *val)
{
	if (val)
		return 0;
	fprintf(stderr, "dsnap %s: --%s is required\n", cmd, name);
	return -1;
}

/* Plain words for the engine's errors (the daemon's API maps them to codes). */
static int engine_fail(int r, const char *what)
{
	const char *why;

	switch (r) {
	case -ENOENT: why = "no such disk, snapshot or path"; break;
	case -ENODEV: why = "the disk's device or file is gone from this host"; break;
	case -EBUSY: why = "the disk is in use (mounted, open for writing, or being reset)"; break;
	case -EALREADY: why = "a snapshot of this disk is already being created"; break;
	case -EDQUOT: why = "the disk already has 256 snapshots"; break;
	case -ENOTSUP: why = "not a block device or regular file"; break;
	case -EEXIST: why = "already exists"; break;
	case -ENOLCK: why = "the disk is locked by the administrator"; break;
	case -ENODATA: why = "the snapshot failed; it holds no image"; break;
	default: why = strerror(-r); break;
	}
	fprintf(stderr, "dsnap: %s: %s\n", what, why);
	return EXIT_FAIL;
}

static struct ds_engine *open_engine(void)
{
	struct ds_engine *e = NULL;
	int r;

	make_parents(state_dir);
	r = ds_engine_open(state_dir, NULL, &e);
	if (r < 0) {
		fprintf(stderr, "dsnap: cannot open state folder %s: %s\n", state_dir,
			r == -EBUSY ? "in use by another dsnap process" : strerror(-r));
		return NULL;
	}
	return e;
}

static void format_time(int64_t t, char out[32])
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static const char *kind_name(enum ds_disk_kind k)
{
	return k == DS_DISK_FILE ? "file" : k == DS_DISK_LOOP ? "loop" : "block";
}

static int print_disk(const struct ds_disk_info *d, void *opaque)
{
	char t[32];

	format_time(d->created, t);
	printf("%-22s %-12s %-9s %-5s %10.2f GiB  %-8s %s%s\n", d->id, d->status,
	       d->present ? "present" : "MISSING", kind_name(d->kind),
	       (double)d->size / (1 << 30), d->fs_type[0] ? d->fs_type : "-", d->path,
	       d->locked ? " (locked)" : "");
	(void)t;
	return 0;
}

static int print_snapshot(const struct ds_snapshot_info *s, void *opaque)
{
	const char *only = opaque;
	char t[32];

	if (only && strcmp(only, s->id) != 0)
		return 0;
	format_time(s->created, t);
	printf("%-22s %-22s %-12s %3d%%  %10.2f GiB  %s  %s%s%s\n", s->id, s->disk_id, s->status,
	       s->progress, (double)s->disk_size / (1 << 30), t, s->name[0] ? s->name : "-",
	       s->error[0] ? "  error: " : "", s->error);
	return 0;
}

static int cmd_register_disk(int argc, char **argv)
{
	static const char *const names[] = {"path", "disk-name", NULL};
	const char *v[2] = {0};
	char id[DS_ID_SIZE];
	struct ds_engine *e;
	int r;

	if (parse_flags(argv[0], argc, argv, names, v) < 0 || need_flag(argv[0], "path", v[0]) < 0)
		return EXIT_USAGE;
	if (!(e = open_engine()))
		return EXIT_FAIL;
	r = ds_disk_register(e, v[0], v[1], id);
	ds_engine_close(e);
	if (r == -EEXIST) {
		fprintf(stderr, "dsnap: %s is already registered as %s\n", v[0], id);
		return EXIT_FAIL;
	}
	if (r < 0)
		return engine_fail(r, v[0]);
	printf("%s\n", id);
	return 0;
}

static int cmd_create_disk(int argc, char **argv)
{
	static const char *const names[] = {"size", "snapshot-id", "disk-name", NULL};
	const char *v[3] = {0};
	char id[DS_ID_SIZE];
	struct ds_engine *e;
	uint64_t size = 0;
	int r;

	if (parse_flags(argv[0], argc, argv, names, v) < 0)
		return EXIT_USAGE;
	if (!v[0] == !v[1]) {
		fprintf(stderr, "dsnap create-disk: give --size or --snapshot-id\n");
		return EXIT_USAGE;
	}
	if (v[0] && (parse_size(v[0], &size) < 0 || size == 0)) {
		fprintf(stderr, "dsnap create-disk: bad --size (e.g. 10G, 512M)\n");
		return EXIT_USAGE;
	}
	if (!(e = open_engine()))
		return EXIT_FAIL;
	r = v[0] ? ds_disk_create(e, size, v[2], id) : ds_disk_create_from_snapshot(e, v[1], v[2], id);
	ds_engine_close(e);
	if (r < 0)
		return engine_fail(r, "create-disk");
	printf("%s\n", id);
	return 0;
}

static int cmd_describe_disks(int argc, char **argv)
{
	static const char *const names[] = {"disk-id", NULL};
	const char *v[1] = {0};
	struct ds_disk_info d;
	struct ds_engine *e;
	int r;

	if (parse_flags(argv[0], argc, argv, names, v) < 0)
		return EXIT_USAGE;
	if (!(e = open_engine()))
		return EXIT_FAIL;
	if (v[0]) {
		r = ds_disk_get(e, v[0], &d);
		if (r == 0)
			print_disk(&d, NULL);
	} else {
		r = ds_disk_list(e, print_disk, NULL);
	}
	ds_engine_close(e);
	return r < 0 ? engine_fail(r, "describe-disks") : 0;
}

static int cmd_delete_disk(int argc, char **argv)
{
	static const char *const names[] = {"disk-id", NULL};
	const char *v[1] = {0};
	struct ds_engine *e;
	int r;

	if (parse_flags(argv[0], argc, argv, names, v) < 0 ||
	    need_flag(argv[0], "disk-id", v[0]) < 0)
		return EXIT_USAGE;
	if (!(e = open_engine()))
		return EXIT_FAIL;
	r = ds_disk_delete(e, v[0]);
	ds_engine_close(e);
	return r < 0 ? engine_fail(r, v[0]) : 0;
}

static int cmd_create_snapshot(int argc, char **argv)
{
	static const char *const names[] = {"disk-id", "snapshot-name", "description",
					    "retention-days", NULL};
	const char *v[4] = {0};
	struct ds_snapshot_params p = {0};
	struct ds_snapshot_info s;
	char id[DS_ID_SIZE], *end;
	struct ds_engine *e;
	int r;

	if (parse_flags(argv[0], argc, argv, names, v) < 0 ||
	    need_flag(argv[0], "disk-id", v[0]) < 0)
		return EXIT_USAGE;
	p.name = v[1];
	p.description = v[2];
	if (v[3]) {
		long d = strtol(v[3], &end, 10);
		if (*end || d < 1 || d > 65536) {
			fprintf(stderr, "dsnap create-snapshot: --retention-days is 1..65536\n");
			return EXIT_USAGE;
		}
		p.retention_days = (int)d;
	}
	if (!(e = open_engine()))
		return EXIT_FAIL;
	r = ds_snapshot_create(e, v[0], &p, id);
	if (r < 0) {
		ds_engine_close(e);
		return engine_fail(r, v[0]);
	}
	printf("%s\n", id);
	fflush(stdout);
	/* In this process the copy ends with it: follow it to the end. */
	while (ds_snapshot_get(e, id, &s) == 0 && strcmp(s.status, "progressing") == 0) {
		progress((uint64_t)s.progress, 100, "snapshot");
		usleep(200000);
	}
	r = ds_snapshot_wait(e, id);
	ds_snapshot_get(e, id, &s);
	if (!quiet && isatty(STDERR_FILENO))
		fprintf(stderr, "\rsnapshot %s: %s          \n", id, s.status);
	ds_engine_close(e);
	if (r < 0) {
		fprintf(stderr, "dsnap: snapshot %s failed: %s\n", id, s.error);
		return EXIT_FAIL;
	}
	return 0;
}

static int cmd_describe_snapshots(int argc, char **argv)
{
	static const char *const names[] = {"disk-id", "snapshot-id", NULL};
	const char *v[2] = {0};
	struct ds_engine *e;
	int r;

	if (parse_flags(argv[0], argc, argv, names, v) < 0)
		return EXIT_USAGE;
	if (!(e = open_engine()))
		return EXIT_FAIL;
	r = ds_snapshot_list(e, v[0], print_snapshot, (void *)v[1]);
	ds_engine_close(e);
	return r < 0 ? engine_fail(r, "describe-snapshots") : 0;
}

static int cmd_snapshot_op(int argc, char **argv)
{
	static const char *const names[] = {"snapshot-id", "disk-id", "path", NULL};
	const char *v[3] = {0}, *cmd = argv[0];
	struct ds_engine *e;
	int64_t bad = 0;
	int r;

	if (parse_flags(cmd, argc, argv, names, v) < 0 || need_flag(cmd, "snapshot-id", v[0]) < 0)
		return EXIT_USAGE;
	if (strcmp(cmd, "reset-disk") == 0 && need_flag(cmd, "disk-id", v[1]) < 0)
		return EXIT_USAGE;
	if (strcmp(cmd, "export-snapshot") == 0 && need_flag(cmd, "path", v[2]) < 0)
		return EXIT_USAGE;
	if (!(e = open_engine()))
		return EXIT_FAIL;
	if (strcmp(cmd, "delete-snapshot") == 0) {
		r = ds_snapshot_delete(e, v[0]);
	} else if (strcmp(cmd, "reset-disk") == 0) {
		r = ds_disk_reset(e, v[1], v[0]);
	} else if (strcmp(cmd, "export-snapshot") == 0) {
		r = ds_snapshot_export(e, v[0], v[2]);
	} else {
		bad = ds_snapshot_verify(e, v[0]);
		r = bad < 0 ? (int)bad : 0;
	}
	ds_engine_close(e);
	if (r < 0)
		return engine_fail(r, v[0]);
	if (strcmp(cmd, "verify-snapshot") == 0) {
		printf("%lld bad chunks\n", (long long)bad);
		return bad ? EXIT_DAMAGE : 0;
	}
	return 0;
}

static int cmd_engine_gc(void)
{
	struct ds_gc_stats st;
	struct ds_engine *e;
	int r;

	if (!(e = open_engine()))
		return EXIT_FAIL;
	r = ds_engine_gc(e, &st);
	ds_engine_close(e);
	if (r < 0)
		return engine_fail(r, "gc");
	printf("removed %llu chunks, rewrote %llu packs, freed %llu bytes\n",
	       (unsigned long long)st.chunks_removed, (unsigned long long)st.packs_rewritten,
	       (unsigned long long)st.bytes_freed);
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
} engine_commands[] = {
	{"register-disk", cmd_register_disk},
	{"create-disk", cmd_create_disk},
	{"describe-disks", cmd_describe_disks},
	{"delete-disk", cmd_delete_disk},
	{"create-snapshot", cmd_create_snapshot},
	{"describe-snapshots", cmd_describe_snapshots},
	{"delete-snapshot", cmd_snapshot_op},
	{"reset-disk", cmd_snapshot_op},
	{"export-snapshot", cmd_snapshot_op},
	{"verify-snapshot", cmd_snapshot_op},
};

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"store", required_argument, NULL, 's'},
					      {"state", required_argument, NULL, 'S'},
					      {"quiet", no_argument, NULL, 'q'},
					      {"help", no_argument, NULL, 'h'},
					      {"version", no_argument, NULL, 'V'},
					      {NULL, 0, NULL, 0}};
	const char *cmd;
	int c;

	while ((c = getopt_long(argc, argv, "+s:S:qhV", opts, NULL)) != -1) {
		switch (c) {
		case 's': store_dir = optarg; break;
		case 'S': state_dir = optarg; break;
		case 'q': quiet = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("dsnap %s\n", DS_VERSION_STRING); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (!state_dir)
		state_dir = default_state();
	if (!store_dir)
		store_dir = default_store();
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	for (size_t i = 0; i < sizeof(engine_commands) / sizeof(engine_commands[0]); i++)
		if (strcmp(argv[optind], engine_commands[i].name) == 0)
			return engine_commands[i].fn(argc - optind, argv + optind);
	if (strcmp(argv[optind], "gc") == 0 && optind + 1 == argc)
		return cmd_engine_gc();
	if (optind + 1 >= argc || strcmp(argv[optind], "store") != 0) {
		usage(stderr);
		return EXIT_USAGE;
	}
	argc -= optind + 1;
	argv += optind + 1;
	cmd = argv[0];
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
	usage(stderr);
	return EXIT_USAGE;
}
