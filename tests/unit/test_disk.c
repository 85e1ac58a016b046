/*
 * Tests of disks (engine/disk): what a path is (probe), finding it again
 * (resolve), ids, and points in time: a read lease on a plain image file
 * that a writer breaks, O_EXCL on a block device that a mount refuses,
 * and a reflink clone on XFS that keeps the old bytes while the image is
 * rewritten.
 *
 * Loop device and mount tests need root and /dev/loop-control and skip
 * otherwise; the clone test also needs mkfs.xfs. Each test gets a fresh
 * folder under /tmp (setup); teardown unmounts and detaches what the test
 * made and removes the folder, also when an assertion fails.
 */
#include "testutil.h"

#include <dirent.h>

#include "disk/disk.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

struct fx {
	char tmp[PATH_MAX];
	char img[PATH_MAX]; /* tmp/disk.img */
	struct scratch_devs devs;
	struct disk_pit pit;
	pid_t child;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (!f || tmpdir_make(f->tmp, sizeof(f->tmp)) < 0) {
		free(f);
		return -1;
	}
	path_cat(f->img, sizeof(f->img), f->tmp, "disk.img");
	f->pit.fd = -1;
	test_log_capture();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	disk_pit_release(&f->pit);
	if (f->child > 0) {
		kill(f->child, SIGKILL);
		waitpid(f->child, NULL, 0);
	}
	scratch_release(&f->devs);
	rm_rf(f->tmp);
	free(f);
	return 0;
}

/* ---- helpers ---------------------------------------------------------------------- */

static void make_file(const char *path, size_t size, uint64_t seed)
{
	uint8_t *b = malloc(size ? size : 1);

	assert_non_null(b);
	fill_random(b, size, seed);
	unlink(path);
	assert_int_equal(write_at(path, 0, b, size), 0);
	free(b);
}

/* Puts another file (another inode: made while the old one exists) under path. */
static void replace_file(const char *path, size_t size, uint64_t seed)
{
	char tmp[PATH_MAX];
	int n = snprintf(tmp, sizeof(tmp), "%s.new", path);

	assert_true(n > 0 && (size_t)n < sizeof(tmp));
	make_file(tmp, size, seed);
	assert_int_equal(rename(tmp, path), 0);
}

static bool mkfs(const char *type, const char *path, const char *label)
{
	char prog[32];

	snprintf(prog, sizeof(prog), "mkfs.%s", type);
	if (!tool_exists(prog))
		return false;
	if (strcmp(type, "xfs") == 0) {
		char *argv[] = {prog, "-q", "-f", (char *)path, NULL};
		return run_quiet(argv) == 0;
	}
	{
		char *argv[] = {prog, "-q", "-F", "-L", (char *)label, (char *)path, NULL};
		return run_quiet(argv) == 0;
	}
}

static void assert_key_is_file(const struct disk_row *d, const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(d->key.dev, (uint64_t)st.st_dev);
	assert_int_equal(d->key.ino, (uint64_t)st.st_ino);
}

/* The pit's bytes from the start. */
static void assert_pit_reads(const struct disk_pit *pit, const uint8_t *want, size_t len)
{
	uint8_t *b = malloc(len);

	assert_non_null(b);
	assert_int_equal(pread(pit->fd, b, len, 0), (ssize_t)len);
	assert_bytes_equal(b, want, len);
	free(b);
}

static void take_file_pit(struct fx *f, struct disk_row *d)
{
	assert_int_equal(disk_probe(f->img, d), 0);
	assert_int_equal(disk_pit_take(d, &f->pit), 0);
	if (f->pit.cloned)
		skip(); /* /tmp has reflinks: the lease path does not run here */
	assert_true(f->pit.leased);
}

/* ---- probe and resolve ------------------------------------------------------------ */

static void test_probe_file(void **state)
{
	struct fx *f = *state;
	char link[PATH_MAX], via[PATH_MAX], real[PATH_MAX];
	struct disk_row d;

	make_file(f->img, 8 * MiB + 5, 1);
	path_cat(link, sizeof(link), f->tmp, "link.img");
	assert_int_equal(symlink(f->img, link), 0);
	path_cat(via, sizeof(via), f->tmp, "./link.img");
	assert_non_null(realpath(f->img, real));

	assert_int_equal(disk_probe(via, &d), 0);
	assert_int_equal(d.info.kind, DS_DISK_FILE);
	assert_string_equal(d.info.path, real);
	assert_int_equal(d.info.size, 8 * MiB + 5);
	assert_key_is_file(&d, f->img);
	/* the birth time, where the file system keeps one */
	assert_true(d.key.id[0] == '\0' || strncmp(d.key.id, "btime:", 6) == 0);
	assert_string_equal(d.info.status, "Available");
	assert_string_equal(d.info.fs_type, "");
	assert_string_equal(d.info.fs_uuid, "");

	if (!mkfs("ext4", f->img, "dsnaplabel"))
		skip();
	assert_int_equal(disk_probe(f->img, &d), 0);
	assert_string_equal(d.info.fs_type, "ext4");
	assert_int_equal(strlen(d.info.fs_uuid), 36);
	assert_string_equal(d.info.fs_label, "dsnaplabel");
	assert_true(d.key.id[0] == '\0' || strncmp(d.key.id, "btime:", 6) == 0); /* inode and birth */
}

static void test_probe_not_disks(void **state)
{
	struct fx *f = *state;
	char fifo[PATH_MAX], dangling[PATH_MAX], missing[PATH_MAX];
	struct disk_row d;

	path_cat(fifo, sizeof(fifo), f->tmp, "fifo");
	path_cat(dangling, sizeof(dangling), f->tmp, "dangling");
	path_cat(missing, sizeof(missing), f->tmp, "missing.img");
	assert_int_equal(mkfifo(fifo, 0600), 0);
	assert_int_equal(symlink(missing, dangling), 0);

	assert_int_equal(disk_probe("/dev/null", &d), -ENOTSUP);
	assert_int_equal(disk_probe(f->tmp, &d), -ENOTSUP);
	assert_int_equal(disk_probe(fifo, &d), -ENOTSUP);
	assert_int_equal(disk_probe(missing, &d), -ENOENT);
	assert_int_equal(disk_probe(dangling, &d), -ENOENT);
}

static void test_resolve_file(void **state)
{
	struct fx *f = *state;
	char other[PATH_MAX], moved[PATH_MAX];
	struct disk_row d, saved;

	make_file(f->img, MiB, 2);
	assert_int_equal(disk_probe(f->img, &d), 0);
	saved = d;
	assert_int_equal(disk_resolve(&d), 0);
	assert_int_equal(d.info.size, MiB);
	/* It grew: resolve reports the new size. */
	assert_int_equal(write_at(f->img, 3 * MiB - 1, "x", 1), 0);
	assert_int_equal(disk_resolve(&d), 0);
	assert_int_equal(d.info.size, 3 * MiB);
	assert_string_equal(d.info.path, saved.info.path);

	/* Another file renamed over it: same path, another disk. */
	path_cat(other, sizeof(other), f->tmp, "other.img");
	make_file(other, MiB, 3);
	path_cat(moved, sizeof(moved), f->tmp, "moved.img");
	assert_int_equal(link(f->img, moved), 0); /* keep the inode alive */
	assert_int_equal(rename(other, f->img), 0);
	d = saved;
	assert_int_equal(disk_resolve(&d), -ENODEV);

	/* Deleted. */
	assert_int_equal(unlink(f->img), 0);
	d = saved;
	assert_int_equal(disk_resolve(&d), -ENODEV);

	/* A directory where the file was. */
	assert_int_equal(mkdir(f->img, 0700), 0);
	d = saved;
	assert_int_equal(disk_resolve(&d), -ENODEV);
	assert_int_equal(rmdir(f->img), 0);

	/* Back under its name (same inode): found again. */
	assert_int_equal(rename(moved, f->img), 0);
	d = saved;
	assert_int_equal(disk_resolve(&d), 0);
}

static int id_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void test_new_id(void **state)
{
	enum { N = 2000 };
	char(*ids)[DS_ID_SIZE] = calloc(N, sizeof(*ids));
	bool seen[36] = {0};
	char id[DS_ID_SIZE];

	(void)state;
	assert_non_null(ids);
	for (int i = 0; i < N; i++) {
		const char *prefix = i % 2 ? "s-" : "d-";
		assert_int_equal(disk_new_id(prefix, ids[i]), 0);
		assert_int_equal(strlen(ids[i]), 22);
		assert_memory_equal(ids[i], prefix, 2);
		for (int k = 2; k < 22; k++) {
			char ch = ids[i][k];
			bool digit = ch >= '0' && ch <= '9', lower = ch >= 'a' && ch <= 'z';
			if (!digit && !lower)
				fail_msg("id %s has '%c'", ids[i], ch);
			seen[digit ? 26 + ch - '0' : ch - 'a'] = true;
		}
	}
	for (int k = 0; k < 36; k++)
		assert_true(seen[k]);
	qsort(ids, N, sizeof(*ids), id_cmp);
	for (int i = 1; i < N; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	free(ids);

	/* The longest prefix that fits, and one too long. */
	assert_int_equal(disk_new_id("rg-", id), 0);
	assert_int_equal(strlen(id), 23);
	memset(id, 'z', sizeof(id));
	assert_int_equal(disk_new_id("abcd", id), -EINVAL);
}

/* ---- points in time of image files -------------------------------------------------- */

static void test_pit_lease(void **state)
{
	struct fx *f = *state;
	struct disk_pit second = {.fd = -1};
	struct disk_row d;
	size_t len = 0;
	uint8_t *want;
	int ro;

	make_file(f->img, MiB + 7, 4);
	/* A reader does not stop a point in time. */
	ro = open(f->img, O_RDONLY | O_CLOEXEC);
	assert_true(ro >= 0);
	take_file_pit(f, &d);
	close(ro);
	assert_int_equal(f->pit.size, MiB + 7);
	assert_true(disk_pit_intact(&f->pit));
	assert_int_equal(fcntl(f->pit.fd, F_GETLEASE), F_RDLCK);
	want = file_read_all(f->img, &len);
	assert_non_null(want);
	assert_pit_reads(&f->pit, want, len);
	free(want);
	/* Read leases share: a second point in time of the same file. */
	assert_int_equal(disk_pit_take(&d, &second), 0);
	assert_true(second.leased);
	disk_pit_release(&second);
	assert_int_equal(second.fd, -1);
	assert_true(disk_pit_intact(&f->pit));

	disk_pit_release(&f->pit);
	assert_int_equal(f->pit.fd, -1);
	disk_pit_release(&f->pit); /* twice is fine */
}

static void test_pit_refused_while_open_for_writing(void **state)
{
	struct fx *f = *state;
	static const int modes[] = {O_RDWR, O_WRONLY};
	struct disk_row d;

	make_file(f->img, MiB, 5);
	assert_int_equal(disk_probe(f->img, &d), 0);
	for (size_t i = 0; i < 2; i++) {
		int w = open(f->img, modes[i] | O_CLOEXEC);
		int r;

		assert_true(w >= 0);
		r = disk_pit_take(&d, &f->pit);
		if (r == 0 && f->pit.cloned) {
			close(w);
			skip(); /* /tmp has reflinks */
		}
		assert_int_equal(r, -EBUSY);
		assert_int_equal(f->pit.fd, -1);
		close(w);
	}
	assert_int_equal(disk_pit_take(&d, &f->pit), 0);
	assert_true(f->pit.leased);
}

/* An open for writing breaks the lease; the point in time says so. */
static void test_pit_lease_broken_by_writer(void **state)
{
	struct fx *f = *state;
	struct disk_row d;
	int w;

	make_file(f->img, MiB, 6);
	take_file_pit(f, &d);
	/* Non-blocking: the open fails, but the break has started. */
	w = open(f->img, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	assert_int_equal(w, -1);
	assert_int_equal(errno, EWOULDBLOCK);
	assert_false(disk_pit_intact(&f->pit));
	disk_pit_release(&f->pit);
	/* Released: the writer gets in. */
	w = open(f->img, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	assert_true(w >= 0);
	close(w);
}

/* A blocking writer in another process waits for the lease holder, which
 * sees the break and lets go. */
static void test_pit_lease_blocking_writer(void **state)
{
	struct fx *f = *state;
	struct disk_row d;
	double t0;
	int st;

	make_file(f->img, MiB, 7);
	take_file_pit(f, &d);
	f->child = fork();
	assert_true(f->child >= 0);
	if (f->child == 0) {
		int w;
		child_default_signals();
		w = open(f->img, O_WRONLY | O_CLOEXEC);
		_exit(w >= 0 && write(w, "W", 1) == 1 ? 0 : 1);
	}
	t0 = now_sec();
	while (disk_pit_intact(&f->pit) && now_sec() - t0 < 10)
		usleep(2000);
	assert_false(disk_pit_intact(&f->pit));
	/* The writer still waits for us. */
	usleep(50000);
	assert_int_equal(waitpid(f->child, &st, WNOHANG), 0);
	disk_pit_release(&f->pit);
	assert_int_equal(waitpid(f->child, &st, 0), f->child);
	f->child = 0;
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	/* And it did write. */
	{
		size_t len;
		uint8_t *b = file_read_all(f->img, &len);
		assert_non_null(b);
		assert_int_equal(b[0], 'W');
		free(b);
	}
}

static void test_pit_file_gone(void **state)
{
	struct fx *f = *state;
	struct disk_row d;

	make_file(f->img, MiB, 8);
	assert_int_equal(disk_probe(f->img, &d), 0);
	/* Another file under the name. */
	replace_file(f->img, MiB, 9);
	assert_int_equal(disk_pit_take(&d, &f->pit), -ENODEV);
	assert_int_equal(f->pit.fd, -1);
	assert_int_equal(unlink(f->img), 0);
	assert_int_equal(disk_pit_take(&d, &f->pit), -ENODEV);
	assert_int_equal(f->pit.fd, -1);
}

static void test_open_for_restore_file(void **state)
{
	struct fx *f = *state;
	struct disk_row d;
	int fd = -1, other;

	make_file(f->img, MiB, 10);
	assert_int_equal(disk_probe(f->img, &d), 0);

	/* Anyone with the file open (even to read) keeps a restore out. */
	other = open(f->img, O_RDONLY | O_CLOEXEC);
	assert_true(other >= 0);
	assert_int_equal(disk_open_for_restore(&d, &fd), -EBUSY);
	assert_int_equal(fd, -1);
	close(other);

	assert_int_equal(disk_open_for_restore(&d, &fd), 0);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "R", 1, 0), 1);
	assert_int_equal(fcntl(fd, F_GETLEASE), F_WRLCK);
	/* While it is held, an opener waits (non-blocking: refused). */
	other = open(f->img, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	assert_int_equal(other, -1);
	assert_int_equal(errno, EWOULDBLOCK);
	close(fd);

	/* The file replaced: not the disk any more. */
	replace_file(f->img, MiB, 11);
	fd = -1;
	assert_int_equal(disk_open_for_restore(&d, &fd), -ENODEV);
	assert_int_equal(fd, -1);
	unlink(f->img);
	assert_int_equal(disk_open_for_restore(&d, &fd), -ENODEV);
}

/* ---- loop devices ------------------------------------------------------------------- */

static void need_loop(void)
{
	if (!loop_available())
		skip();
}

static void test_loop_probe(void **state)
{
	struct fx *f = *state;
	char dev[32];
	struct disk_row d;
	bool fs;

	need_loop();
	make_file(f->img, 16 * MiB, 12);
	fs = mkfs("ext4", f->img, "looplabel");
	assert_int_equal(loop_attach(&f->devs, f->img, NULL, dev, sizeof(dev)), 0);
	assert_int_equal(disk_probe(dev, &d), 0);
	assert_int_equal(d.info.kind, DS_DISK_LOOP);
	assert_string_equal(d.info.path, dev);
	assert_int_equal(d.info.size, 16 * MiB);
	/* Known by its backing file, like the file itself. */
	assert_key_is_file(&d, f->img);
	if (fs) {
		assert_string_equal(d.info.fs_type, "ext4");
		assert_string_equal(d.info.fs_label, "looplabel");
	}
	{
		struct disk_row df;
		assert_int_equal(disk_probe(f->img, &df), 0);
		assert_int_equal(df.key.dev, d.key.dev);
		assert_int_equal(df.key.ino, d.key.ino);
	}
	assert_int_equal(disk_resolve(&d), 0);
	assert_string_equal(d.info.path, dev);
	assert_int_equal(d.info.size, 16 * MiB);
}

/* Detached and attached again on another number: found by its file. */
static void test_loop_renumbered(void **state)
{
	struct fx *f = *state;
	char a[32], b[32];
	struct disk_row d;

	need_loop();
	make_file(f->img, 4 * MiB, 13);
	assert_int_equal(loop_attach(&f->devs, f->img, NULL, a, sizeof(a)), 0);
	assert_int_equal(disk_probe(a, &d), 0);
	loop_detach(&f->devs, a);
	assert_int_equal(disk_resolve(&d), -ENODEV);
	assert_int_equal(loop_attach(&f->devs, f->img, a, b, sizeof(b)), 0);
	assert_string_not_equal(a, b);
	assert_int_equal(disk_resolve(&d), 0);
	assert_string_equal(d.info.path, b);
	assert_int_equal(d.info.size, 4 * MiB);
	/* A point in time of it opens the new device. */
	assert_int_equal(disk_pit_take(&d, &f->pit), 0);
	assert_false(f->pit.leased);
	assert_false(f->pit.cloned);
	assert_int_equal(f->pit.size, 4 * MiB);
}

/* A mounted device has no point in time and takes no restore; a held one
 * cannot be mounted. */
static void test_loop_mounted(void **state)
{
	struct fx *f = *state;
	char dev[32], mnt[PATH_MAX];
	struct disk_row d;
	int fd = -1;

	need_loop();
	make_file(f->img, 16 * MiB, 14);
	if (!mkfs("ext4", f->img, "m"))
		skip();
	path_cat(mnt, sizeof(mnt), f->tmp, "mnt");
	assert_int_equal(loop_attach(&f->devs, f->img, NULL, dev, sizeof(dev)), 0);
	assert_int_equal(disk_probe(dev, &d), 0);

	assert_int_equal(disk_pit_take(&d, &f->pit), 0);
	assert_int_equal(scratch_mount(&f->devs, dev, mnt, "ext4"), -EBUSY);
	disk_pit_release(&f->pit);

	assert_int_equal(scratch_mount(&f->devs, dev, mnt, "ext4"), 0);
	assert_int_equal(disk_pit_take(&d, &f->pit), -EBUSY);
	assert_int_equal(f->pit.fd, -1);
	assert_int_equal(disk_open_for_restore(&d, &fd), -EBUSY);
	assert_int_equal(fd, -1);
	scratch_umount(&f->devs, mnt);

	assert_int_equal(disk_open_for_restore(&d, &fd), 0);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(disk_pit_take(&d, &f->pit), 0);
}

/* On XFS (reflink=1) the point in time is a clone: writers go on, and the
 * clone keeps what the file held. */
static void test_pit_clone_xfs(void **state)
{
	struct fx *f = *state;
	char fsimg[PATH_MAX], mnt[PATH_MAX], img[PATH_MAX], dev[32];
	uint8_t *old = malloc(MiB), *new = malloc(MiB);
	struct disk_row d;
	int w = -1, r;

	assert_non_null(old);
	assert_non_null(new);
	if (!loop_available() || !tool_exists("mkfs.xfs")) {
		free(old);
		free(new);
		skip();
	}
	path_cat(fsimg, sizeof(fsimg), f->tmp, "xfs.img");
	path_cat(mnt, sizeof(mnt), f->tmp, "mnt");
	assert_int_equal(file_truncate(fsimg, 300 * MiB), 0);
	assert_true(mkfs("xfs", fsimg, NULL));
	assert_int_equal(loop_attach(&f->devs, fsimg, NULL, dev, sizeof(dev)), 0);
	r = scratch_mount(&f->devs, dev, mnt, "xfs");
	if (r == -ENODEV) { /* no xfs in this kernel */
		free(old);
		free(new);
		skip();
	}
	assert_int_equal(r, 0);
	path_cat(img, sizeof(img), mnt, "disk.img");
	fill_random(old, MiB, 15);
	fill_random(new, MiB, 16);
	assert_int_equal(write_at(img, 0, old, MiB), 0);
	assert_int_equal(disk_probe(img, &d), 0);

	/* Someone has it open for writing: a clone is a point in time anyway. */
	w = open(img, O_RDWR | O_CLOEXEC);
	assert_true(w >= 0);
	assert_int_equal(disk_pit_take(&d, &f->pit), 0);
	assert_true(f->pit.cloned);
	assert_false(f->pit.leased);
	assert_int_equal(f->pit.size, MiB);
	assert_int_equal(pwrite(w, new, MiB, 0), (ssize_t)MiB);
	assert_int_equal(fsync(w), 0);
	assert_true(disk_pit_intact(&f->pit));
	assert_pit_reads(&f->pit, old, MiB);
	close(w);
	disk_pit_release(&f->pit);
	/* The clone was unnamed (O_TMPFILE): nothing is left beside the image. */
	{
		DIR *dir = opendir(mnt);
		struct dirent *de;
		int n = 0;

		assert_non_null(dir);
		while ((de = readdir(dir)))
			n += de->d_name[0] != '.';
		closedir(dir);
		assert_int_equal(n, 1);
	}
	free(old);
	free(new);
	scratch_umount(&f->devs, mnt);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_probe_file),
		T(test_probe_not_disks),
		T(test_resolve_file),
		T(test_new_id),
		T(test_pit_lease),
		T(test_pit_refused_while_open_for_writing),
		T(test_pit_lease_broken_by_writer),
		T(test_pit_lease_blocking_writer),
		T(test_pit_file_gone),
		T(test_open_for_restore_file),
		T(test_loop_probe),
		T(test_loop_renumbered),
		T(test_loop_mounted),
		T(test_pit_clone_xfs),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}
