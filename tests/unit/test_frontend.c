/*
 * The frontend on real FUSE and loop devices, on both transports: the loop
 * device reads exactly the backing, writes of every size and alignment
 * reach the backing, fsync works, a file system made on it checks clean,
 * resizing is refused, detach is refused while the device is held and
 * cleans up everything when it is not. Root, /dev/fuse and loop devices
 * are needed; otherwise the tests skip.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "cow/cow.h"
#include "frontend/frontend.h"

#define SIZE (64u << 20)

struct fx {
	char dir[64], image[128], mnt[128], overlay[128];
	struct cow *cow;
	struct frontend *f;
};

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	uint8_t *buf = malloc(SIZE);
	int fd;

	if (!f || !buf)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "/tmp/dsnap-fe.XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->image, sizeof(f->image), "%s/backing.img", f->dir);
	snprintf(f->mnt, sizeof(f->mnt), "%s/mnt", f->dir);
	snprintf(f->overlay, sizeof(f->overlay), "%s/overlay", f->dir);
	mkdir(f->mnt, 0700);
	fill(buf, SIZE, 1);
	fd = open(f->image, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, buf, SIZE) != (ssize_t)SIZE)
		return -1;
	close(fd);
	free(buf);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[256];

	if (f->f)
		frontend_detach(f->f, true);
	cow_close(f->cow);
	umount2(f->mnt, MNT_DETACH);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", f->dir);
	free(f);
	return 0;
}

static bool can_run(void)
{
	return geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0 &&
	       access("/dev/loop-control", R_OK | W_OK) == 0;
}

static void attach(struct fx *f, enum frontend_transport t)
{
	int r;

	if (!can_run())
		skip();
	if (t != FRONTEND_DEV)
		frontend_enable_uring(true);
	if (!f->cow)
		assert_int_equal(cow_open(f->image, f->overlay, 65536, 1u << 20, &f->cow, NULL), 0);
	r = frontend_attach(f->cow, f->image, f->mnt, t, &f->f);
	if (r == -EOPNOTSUPP && t == FRONTEND_URING)
		skip();
	assert_int_equal(r, 0);
	if (t != FRONTEND_AUTO)
		assert_string_equal(frontend_transport_name(f->f),
				    t == FRONTEND_URING ? "io_uring" : "/dev/fuse");
	assert_true(strncmp(frontend_device(f->f), "/dev/loop", 9) == 0);
}

static void read_at(const char *path, int flags, void *buf, size_t len, off_t off)
{
	int fd = open(path, O_RDONLY | flags);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, len, off), (ssize_t)len);
	close(fd);
}

static void io_round_trip(enum frontend_transport t, void **state)
{
	struct fx *f = *state;
	uint8_t *want = malloc(SIZE), *got;
	static const struct { off_t off; size_t len; } cases[] = {
		{0, 4096}, {512, 512}, {4096 * 7, 1 << 20}, {SIZE - 4096, 4096},
		{123456 * 512, 3 * 4096 + 512}, {1 << 20, 256 * 1024}, {5 << 20, 3 << 20},
	};
	int fd;

	assert_non_null(want);
	assert_int_equal(posix_memalign((void **)&got, 4096, SIZE), 0);
	attach(f, t);
	fill(want, SIZE, 1);
	/* The loop device reads exactly the backing, through direct I/O. */
	read_at(frontend_device(f->f), O_DIRECT, got, SIZE, 0);
	assert_memory_equal(got, want, SIZE);

	/* Writes of several sizes and alignments, direct and buffered. */
	fd = open(frontend_device(f->f), O_RDWR | O_DIRECT);
	assert_true(fd >= 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fill(got, cases[i].len, 100 + (unsigned)i);
		assert_int_equal(pwrite(fd, got, cases[i].len, cases[i].off), (ssize_t)cases[i].len);
		memcpy(want + cases[i].off, got, cases[i].len);
	}
	assert_int_equal(fsync(fd), 0);
	close(fd);
	fd = open(frontend_device(f->f), O_RDWR);
	fill(got, 1000, 999);
	assert_int_equal(pwrite(fd, got, 1000, 777), 1000);
	memcpy(want + 777, got, 1000);
	assert_int_equal(fsync(fd), 0);
	close(fd);

	read_at(frontend_device(f->f), O_DIRECT, got, SIZE, 0);
	assert_memory_equal(got, want, SIZE);
	/* And they reached the backing. */
	read_at(f->image, 0, got, SIZE, 0);
	assert_memory_equal(got, want, SIZE);
	/* The FUSE file itself, read buffered at an odd offset. */
	{
		char file[160];
		snprintf(file, sizeof(file), "%s/disk", f->mnt);
		read_at(file, 0, got, 1000, 777);
		assert_memory_equal(got, want + 777, 1000);
	}
	free(want);
	free(got);
}

static void test_io_uring(void **state)
{
	io_round_trip(FRONTEND_URING, state);
}

static void test_io_dev(void **state)
{
	io_round_trip(FRONTEND_DEV, state);
}

static void test_resize_refused(void **state)
{
	struct fx *f = *state;
	char file[160];

	attach(f, FRONTEND_AUTO);
	snprintf(file, sizeof(file), "%s/disk", f->mnt);
	assert_int_equal(truncate(file, SIZE / 2), -1);
	assert_int_equal(errno, EPERM);
	assert_int_equal(truncate(file, SIZE * 2), -1);
}

static void test_detach_refused_while_held(void **state)
{
	struct fx *f = *state;
	struct stat st;
	int fd;

	attach(f, FRONTEND_AUTO);
	/* What a mount does: hold the device exclusively. */
	fd = open(frontend_device(f->f), O_RDONLY | O_EXCL);
	assert_true(fd >= 0);
	assert_int_equal(frontend_detach(f->f, false), -EBUSY);
	close(fd);
	assert_int_equal(frontend_detach(f->f, false), 0);
	f->f = NULL;
	/* Nothing is left: the FUSE mount is gone. */
	assert_int_equal(stat(f->mnt, &st), 0);
	assert_int_not_equal(access(f->mnt, F_OK), -1);
	{
		char file[160];
		snprintf(file, sizeof(file), "%s/disk", f->mnt);
		assert_int_equal(access(file, F_OK), -1);
	}
}

static void test_filesystem(void **state)
{
	struct fx *f = *state;
	char cmd[512];

	attach(f, FRONTEND_AUTO);
	if (system("command -v mkfs.ext4 >/dev/null") != 0)
		skip();
	snprintf(cmd, sizeof(cmd),
		 "mkfs.ext4 -q -F %1$s && mkdir -p %2$s/fs && mount %1$s %2$s/fs && "
		 "cp -r /usr/share/doc/libc6 %2$s/fs/ && sync && umount %2$s/fs && "
		 "e2fsck -fn %1$s >/dev/null 2>&1",
		 frontend_device(f->f), f->dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_io_uring, setup, teardown),
		cmocka_unit_test_setup_teardown(test_io_dev, setup, teardown),
		cmocka_unit_test_setup_teardown(test_resize_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_detach_refused_while_held, setup, teardown),
		cmocka_unit_test_setup_teardown(test_filesystem, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
