/*
 * The frontend: one disk served as one FUSE file, with a loop device on it.
 *
 * Notes on the design
 *
 * File system. Node 1 is the root folder, node 2 its only file "disk",
 * whose size is the backing's. The file is opened with FOPEN_DIRECT_IO
 * (no page cache: dsnapd sees every read and write) and
 * FOPEN_PARALLEL_DIRECT_WRITES (else the kernel serialises direct writes
 * to one inode). Resizing it is refused. The loop device is configured
 * with direct I/O on the file, so each block I/O becomes one FUSE
 * request, sent asynchronously (FUSE_ASYNC_DIO, max_background 256).
 *
 * Transports (../shared/notes/fuse-over-io_uring.md has the ABI):
 *  - io_uring: one thread pinned per possible CPU, each with its own ring
 *    (SQE128) holding URING_ENTRIES registered FUSE entries. A request
 *    arrives as a CQE of its entry; the backing read or write is submitted
 *    on the same ring, straight from/into the entry's payload buffer
 *    (page aligned: write data is used in place; the payloads' first
 *    64 KiB are registered buffers, so no page pinning for small
 *    transfers); its completion commits the reply with COMMIT_AND_FETCH,
 *    which re-arms the entry.
 *  - /dev/fuse: DEV_THREADS threads, each with its own cloned fd, read a
 *    request, do the backing I/O synchronously, write the reply. The
 *    buffer is laid out so that WRITE data lands page aligned.
 *   Both call the same handlers. In io_uring mode one /dev/fuse thread
 *   still runs for FORGET and INTERRUPT, which never use the ring.
 *
 * Backing I/O goes through the copy-on-write tracker (engine/cow/): every
 * read, write, fsync and discard enters its gate (a request that finds it
 * closed is parked, and retried when the tracker wakes the queue through
 * its eventfd), and each run of blocks goes where cow_route says: the
 * base, or the overlay while a snapshot is being created. Writes that
 * would leave part of an overlay block unfilled take the tracker's
 * synchronous path. An O_DIRECT fd is used when offset, length and buffer
 * are 512-aligned (always, for the loop device), else a buffered fd.
 *
 * dsnapd never keeps a file of its own mount open (the loop device holds
 * the only reference): a dying server would otherwise wait on itself
 * for that file's FUSE_FLUSH at exit, forever.
 *
 * Teardown: clear the loop device, unmount. The kernel
 * then fails every registered entry with -ENOTCONN and read(/dev/fuse)
 * with ENODEV, and the threads end. If the mount lingers (a lazy unmount
 * while something still holds it), the connection is aborted through
 * fusectl.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <linux/loop.h>

#include <liburing.h>

#include "cow/cow.h"
#include "frontend/frontend.h"
#include "util/util.h"

/* ---- the parts of the FUSE ABI newer than Debian 12's <linux/fuse.h> --------- */

#define FUSE_OVER_IO_URING_FLAG (1ULL << 41)
#define FUSE_URING_CMD_REGISTER 1
#define FUSE_URING_CMD_COMMIT_AND_FETCH 2

struct fuse_uring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};

struct fuse_uring_req_header {
	char in_out[128];
	char op_in[128];
	struct fuse_uring_ent_in_out ent;
};

struct fuse_uring_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};

_Static_assert(sizeof(struct fuse_uring_req_header) == 288, "FUSE uring header ABI");
_Static_assert(sizeof(struct fuse_uring_cmd_req) == 24, "FUSE uring cmd ABI");
_Static_assert(sizeof(struct fuse_init_out) == 64, "fuse_init_out is 64 bytes since 7.23");

#define NODE_ROOT 1
#define NODE_DISK 2
#define MAX_WRITE (1024u * 1024)
#define MAX_PAGES (MAX_WRITE / 4096)
#define URING_ENTRIES 32
#define FIXED_BYTES (64u * 1024) /* of each payload, registered (pinned) */
#define DEV_THREADS 4
#define HDR_ROOM 4096 /* /dev/fuse buffers: room before the page-aligned payload */
#define DEV_BUF (HDR_ROOM + MAX_WRITE + 4096)

/* ---- state ------------------------------------------------------------------- */

struct frontend;

enum tag_kind { TAG_CMD, TAG_IO, TAG_WAKE };

struct tag {
	enum tag_kind kind;
};

/* A backing operation a handler asks for. */
struct bio {
	enum { BIO_NONE, BIO_READ, BIO_WRITE, BIO_FSYNC } op;
	void *buf;
	uint32_t len, done;
	uint64_t off;
	/* the run being transferred: [run_start, run_end) of the request,
	 * to the base or the overlay */
	enum cow_where where;
	uint64_t at; /* the run's offset in its file */
	uint32_t run_start, run_end;
	bool retried; /* once, after the overlay filled up */
};

/* One request being answered, whatever the transport. */
struct freq {
	struct frontend *f;
	struct fuse_in_header in;
	const uint8_t *arg;     /* the opcode's first in-argument */
	const uint8_t *payload; /* what follows it */
	uint32_t payload_len;
	uint8_t *out;           /* out-arguments go here */
	uint32_t out_cap, out_len;
	int error;
	bool no_reply;
	bool entered; /* inside the tracker's gate */
	struct bio bio;
};

struct entry {
	struct tag cmd_tag, io_tag; /* user_data of its command and its backing I/O */
	struct queue *q;
	struct fuse_uring_req_header *hdr;
	uint8_t *payload;
	struct iovec iov[2];
	struct freq r;
	bool live;
	struct entry *parked_next;
};

struct queue {
	struct frontend *f;
	int qid;
	struct io_uring ring;
	bool ring_ok;
	bool fixed_bufs; /* each entry's first FIXED_BYTES are a registered buffer */
	bool fixed_dev;  /* /dev/fuse is registered file 0 */
	struct entry *e;
	pthread_t thread;
	bool started;
	int wake_fd; /* the tracker's gate opened: retry the parked requests */
	uint64_t wake_buf;
	struct tag wake_tag;
	struct entry *parked;
};

struct frontend {
	char mnt[PATH_MAX];
	char file[PATH_MAX + 8];
	char loopdev[32];
	int devfd;
	struct cow *cow;            /* the backing, through the tracker; NULL for a reader */
	frontend_read_fn read;      /* a read-only image served by a callback */
	void *read_arg;
	int file_fd;                /* our open of mnt/disk, given to the loop device */
	uint64_t size;
	bool mounted, uring;
	uint32_t kernel_minor;
	int nq;
	struct queue *q;
	pthread_t dev[DEV_THREADS];
	int ndev;
	int dev_fds[DEV_THREADS];
	atomic_int register_err;
};

/* ---- handlers ------------------------------------------------------------------ */

static void fill_attr(const struct frontend *f, uint64_t node, struct fuse_attr *a)
{
	memset(a, 0, sizeof(*a));
	a->ino = node;
	a->nlink = 1;
	a->blksize = 4096;
	if (node == NODE_ROOT) {
		a->mode = S_IFDIR | 0755;
		a->nlink = 2;
	} else {
		a->mode = S_IFREG | (f->read ? 0400 : 0600);
		a->size = f->size;
		a->blocks = (f->size + 511) / 512;
	}
}

static void *reply_space(struct freq *r, uint32_t len)
{
	if (len > r->out_cap) {
		r->error = -EIO;
		return NULL;
	}
	memset(r->out, 0, len);
	r->out_len = len;
	return r->out;
}

static void do_lookup(struct freq *r)
{
	char name[16] = "";
	struct fuse_entry_out *e;

	memcpy(name, r->payload, MIN(r->payload_len, sizeof(name) - 1));
	if (r->in.nodeid != NODE_ROOT || strcmp(name, "disk") != 0) {
		r->error = -ENOENT;
		return;
	}
	if (!(e = reply_space(r, sizeof(*e))))
		return;
	e->nodeid = NODE_DISK;
	e->generation = 1;
	fill_attr(r->f, NODE_DISK, &e->attr);
}

static void do_getattr(struct freq *r)
{
	struct fuse_attr_out *a;

	if (r->in.nodeid != NODE_ROOT && r->in.nodeid != NODE_DISK) {
		r->error = -ENOENT;
		return;
	}
	if (!(a = reply_space(r, sizeof(*a))))
		return;
	fill_attr(r->f, r->in.nodeid, &a->attr);
}

static void do_setattr(struct freq *r)
{
	struct fuse_setattr_in in;

	memcpy(&in, r->arg, sizeof(in));
	/* The disk's size is the backing's: resizing is refused. Times and
	 * modes are accepted and not kept. */
	if ((in.valid & FATTR_SIZE) && in.size != r->f->size) {
		r->error = -EPERM;
		return;
	}
	do_getattr(r);
}

static void do_open(struct freq *r)
{
	struct fuse_open_out *o;

	if (r->in.nodeid != NODE_DISK && r->in.opcode == FUSE_OPEN) {
		r->error = -EISDIR;
		return;
	}
	if (!(o = reply_space(r, sizeof(*o))))
		return;
	o->open_flags = r->in.opcode == FUSE_OPEN ? FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES : 0;
}

static void do_readdir(struct freq *r)
{
	static const struct { uint64_t ino; const char *name; uint32_t type; } ents[] = {
		{NODE_ROOT, ".", S_IFDIR >> 12}, {NODE_ROOT, "..", S_IFDIR >> 12},
		{NODE_DISK, "disk", S_IFREG >> 12}};
	struct fuse_read_in in;
	uint32_t pos = 0;

	memcpy(&in, r->arg, sizeof(in));
	r->out_len = 0;
	for (uint64_t i = in.offset; i < ARRAY_SIZE(ents); i++) {
		size_t nl = strlen(ents[i].name), len = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + nl);
		struct fuse_dirent *d = (struct fuse_dirent *)(r->out + pos);
		if (pos + len > MIN(in.size, r->out_cap))
			break;
		memset(d, 0, len);
		d->ino = ents[i].ino;
		d->off = i + 1;
		d->namelen = (uint32_t)nl;
		d->type = ents[i].type;
		memcpy(d->name, ents[i].name, nl);
		pos += (uint32_t)len;
	}
	r->out_len = pos;
}

static void do_read(struct freq *r)
{
	struct fuse_read_in in;
	uint64_t len;

	memcpy(&in, r->arg, sizeof(in));
	r->out_len = 0;
	if (in.offset >= r->f->size)
		return; /* end of file: zero bytes */
	len = MIN((uint64_t)in.size, r->f->size - in.offset);
	if (len > r->out_cap) {
		r->error = -EINVAL;
		return;
	}
	r->bio = (struct bio){.op = BIO_READ, .buf = r->out, .len = (uint32_t)len, .off = in.offset};
}

static void do_write(struct freq *r)
{
	struct fuse_write_in in;

	memcpy(&in, r->arg, sizeof(in));
	if (in.size > r->payload_len) {
		r->error = -EINVAL;
		return;
	}
	/* Writes past the end would grow the disk: refused. */
	if (in.offset > r->f->size || in.size > r->f->size - in.offset) {
		r->error = -ENOSPC;
		return;
	}
	r->bio = (struct bio){.op = BIO_WRITE, .buf = (void *)r->payload, .len = in.size, .off = in.offset};
}

static void do_fallocate(struct freq *r)
{
	struct fuse_fallocate_in in;

	memcpy(&in, r->arg, sizeof(in));
	/* Discards from the loop device: punch holes in the backing. */
	if (in.offset > r->f->size || in.length > r->f->size - in.offset ||
	    !(in.mode & FALLOC_FL_KEEP_SIZE)) {
		r->error = -EOPNOTSUPP;
		return;
	}
	r->error = cow_fallocate(r->f->cow, (int)in.mode, in.offset, in.length);
}

static void do_statfs(struct freq *r)
{
	struct fuse_statfs_out *s = reply_space(r, sizeof(*s));

	if (s) {
		s->st.bsize = 4096;
		s->st.frsize = 4096;
		s->st.namelen = 255;
	}
}

/* Dispatches one request: fills the reply, or r->bio for backing I/O. */
static void handle(struct freq *r)
{
	r->error = 0;
	r->out_len = 0;
	r->no_reply = false;
	r->bio.op = BIO_NONE;
	switch (r->in.opcode) {
	case FUSE_LOOKUP: do_lookup(r); break;
	case FUSE_GETATTR: do_getattr(r); break;
	case FUSE_SETATTR: do_setattr(r); break;
	case FUSE_OPEN:
	case FUSE_OPENDIR: do_open(r); break;
	case FUSE_READDIR: do_readdir(r); break;
	case FUSE_READ: do_read(r); break;
	case FUSE_WRITE:
		if (r->f->read)
			r->error = -EROFS;
		else
			do_write(r);
		break;
	case FUSE_FSYNC:
		if (!r->f->read)
			r->bio = (struct bio){.op = BIO_FSYNC};
		break;
	case FUSE_FALLOCATE:
		if (r->f->read)
			r->error = -EROFS;
		else
			do_fallocate(r);
		break;
	case FUSE_STATFS: do_statfs(r); break;
	case FUSE_FLUSH:
	case FUSE_RELEASE:
	case FUSE_RELEASEDIR:
	case FUSE_ACCESS:
	case FUSE_DESTROY: break;
	case FUSE_FORGET:
	case FUSE_BATCH_FORGET:
	case FUSE_INTERRUPT: r->no_reply = true; break;
	default: r->error = -ENOSYS; break;
	}
}

/* Requests that touch the disk's data pass the tracker's gate. */
static bool gated(uint32_t opcode)
{
	return opcode == FUSE_READ || opcode == FUSE_WRITE || opcode == FUSE_FSYNC ||
	       opcode == FUSE_FALLOCATE;
}

/* Where the current run goes on in its file. */
static uint64_t bio_pos(const struct bio *b)
{
	return b->at + (b->done - b->run_start);
}

/* The fd for the current run: O_DIRECT when everything is aligned. */
static int bio_fd(const struct frontend *f, const struct bio *b)
{
	bool aligned = (bio_pos(b) | (b->run_end - b->done) |
			(uintptr_t)((uint8_t *)b->buf + b->done)) % 512 == 0;
	int fd = -1;

	if (aligned)
		fd = b->where == COW_OVERLAY ? cow_overlay_fd(f->cow, true) : cow_base_fd(f->cow, true);
	if (fd < 0)
		fd = b->where == COW_OVERLAY ? cow_overlay_fd(f->cow, false) : cow_base_fd(f->cow, false);
	return fd;
}

/* Turns a finished backing transfer (res = bytes or -errno) into the reply. */
static void bio_finish(struct freq *r, int res)
{
	if (res < 0) {
		r->error = res;
		r->out_len = 0;
		return;
	}
	if (r->bio.op == BIO_READ) {
		r->out_len = (uint32_t)res;
	} else if (r->bio.op == BIO_WRITE) {
		struct fuse_write_out *w = reply_space(r, sizeof(*w));
		if (w)
			w->size = (uint32_t)res;
	}
}

/* Flush: the base, and the overlay where redirected writes are. */
static int sync_all(struct frontend *f)
{
	if (fdatasync(cow_base_fd(f->cow, false)) < 0)
		return -errno;
	return cow_sync_overlay(f->cow);
}

/* Synchronous backing I/O through the tracker, for the /dev/fuse transport. */
static int bio_sync(struct frontend *f, struct bio *b)
{
	ssize_t n;

	if (f->read) /* a reader: only reads reach here */
		return b->op == BIO_READ ? (int)f->read(f->read_arg, b->buf, b->len, b->off) : -EROFS;
	if (b->op == BIO_FSYNC)
		return sync_all(f);
	n = b->op == BIO_READ ? cow_pread(f->cow, b->buf, b->len, b->off)
			      : cow_pwrite(f->cow, b->buf, b->len, b->off);
	return (int)n;
}

/* ---- the /dev/fuse transport ------------------------------------------------------ */

/* Sizes of each opcode's first in-argument, to find what follows it. */
static uint32_t arg_size(uint32_t opcode)
{
	switch (opcode) {
	case FUSE_GETATTR: return sizeof(struct fuse_getattr_in);
	case FUSE_SETATTR: return sizeof(struct fuse_setattr_in);
	case FUSE_OPEN:
	case FUSE_OPENDIR: return sizeof(struct fuse_open_in);
	case FUSE_READ:
	case FUSE_READDIR: return sizeof(struct fuse_read_in);
	case FUSE_WRITE: return sizeof(struct fuse_write_in);
	case FUSE_RELEASE:
	case FUSE_RELEASEDIR: return sizeof(struct fuse_release_in);
	case FUSE_FSYNC: return sizeof(struct fuse_fsync_in);
	case FUSE_FLUSH: return sizeof(struct fuse_flush_in);
	case FUSE_FALLOCATE: return sizeof(struct fuse_fallocate_in);
	case FUSE_ACCESS: return sizeof(struct fuse_access_in);
	case FUSE_INIT: return sizeof(struct fuse_init_in);
	default: return 0;
	}
}

static void *dev_thread(void *arg)
{
	struct frontend *f = ((void **)arg)[0];
	int fd = (int)(intptr_t)((void **)arg)[1];
	uint8_t *buf = NULL;

	free(arg);
	if (posix_memalign((void **)&buf, 4096, DEV_BUF))
		return NULL;
	for (;;) {
		/* WRITE's header (in header + fuse_write_in, 80 bytes) ends at
		 * HDR_ROOM, so its data starts page aligned. */
		uint8_t *start = buf + HDR_ROOM - sizeof(struct fuse_in_header) -
				 sizeof(struct fuse_write_in);
		ssize_t n = read(fd, start, DEV_BUF - (size_t)(start - buf));
		struct freq r = {.f = f};
		struct fuse_out_header *oh;
		uint32_t asz;

		if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == ENOENT))
			continue;
		if (n < (ssize_t)sizeof(struct fuse_in_header))
			break; /* ENODEV: unmounted */
		memcpy(&r.in, start, sizeof(r.in));
		asz = arg_size(r.in.opcode);
		if ((size_t)n < sizeof(r.in) + asz)
			continue;
		r.arg = start + sizeof(r.in);
		r.payload = r.arg + asz;
		r.payload_len = (uint32_t)((size_t)n - sizeof(r.in) - asz);
		r.out = buf + HDR_ROOM;
		r.out_cap = MAX_WRITE;
		r.entered = f->cow && gated(r.in.opcode);
		while (r.entered && !cow_enter(f->cow))
			cow_wait_open(f->cow);
		handle(&r);
		if (r.bio.op != BIO_NONE && r.error == 0)
			bio_finish(&r, bio_sync(f, &r.bio));
		if (r.entered)
			cow_leave(f->cow);
		if (r.no_reply)
			continue;
		oh = (struct fuse_out_header *)(buf + HDR_ROOM - sizeof(*oh));
		oh->len = (uint32_t)sizeof(*oh) + (r.error ? 0 : r.out_len);
		oh->error = r.error;
		oh->unique = r.in.unique;
		if (write(fd, oh, oh->len) < 0 && errno == ENODEV)
			break;
	}
	free(buf);
	return NULL;
}

static int start_dev_threads(struct frontend *f, int n)
{
	for (int i = 0; i < n; i++) {
		void **arg = malloc(2 * sizeof(void *));
		int fd = f->devfd;

		if (i > 0) {
			uint32_t master = (uint32_t)f->devfd;
			fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
			if (fd < 0 || ioctl(fd, FUSE_DEV_IOC_CLONE, &master) < 0) {
				if (fd >= 0)
					close(fd);
				free(arg);
				return i > 0 ? 0 : -errno; /* fewer threads still work */
			}
			f->dev_fds[i] = fd;
		}
		if (!arg) {
			return -ENOMEM;
		}
		arg[0] = f;
		arg[1] = (void *)(intptr_t)fd;
		if (pthread_create(&f->dev[i], NULL, dev_thread, arg) != 0) {
			free(arg);
			return -EAGAIN;
		}
		f->ndev++;
	}
	return 0;
}

/* ---- the io_uring transport ----------------------------------------------------------- */

static struct io_uring_sqe *get_sqe(struct queue *q)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);

	if (!sqe) {
		io_uring_submit(&q->ring);
		sqe = io_uring_get_sqe(&q->ring);
	}
	if (sqe)
		memset(sqe, 0, 128); /* SQE128 */
	return sqe;
}

static void submit_cmd(struct queue *q, struct entry *e, uint32_t cmd_op, uint64_t commit_id)
{
	struct io_uring_sqe *sqe = get_sqe(q);
	struct fuse_uring_cmd_req *cmd;

	if (!sqe)
		return;
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = q->f->devfd;
	if (q->fixed_dev) {
		sqe->fd = 0;
		sqe->flags |= IOSQE_FIXED_FILE;
	}
	sqe->cmd_op = cmd_op;
	if (cmd_op == FUSE_URING_CMD_REGISTER) {
		sqe->addr = (uint64_t)(uintptr_t)e->iov;
		sqe->len = 2;
	}
	cmd = (struct fuse_uring_cmd_req *)sqe->cmd;
	cmd->commit_id = commit_id;
	cmd->qid = (uint16_t)q->qid;
	io_uring_sqe_set_data(sqe, &e->cmd_tag);
}

static void commit(struct queue *q, struct entry *e)
{
	struct fuse_out_header *oh = (struct fuse_out_header *)e->hdr->in_out;

	if (e->r.entered) {
		e->r.entered = false;
		cow_leave(q->f->cow);
	}
	oh->len = (uint32_t)sizeof(*oh) + (e->r.error ? 0 : e->r.out_len);
	oh->error = e->r.error;
	oh->unique = e->r.in.unique;
	e->hdr->ent.payload_sz = e->r.error ? 0 : e->r.out_len;
	submit_cmd(q, e, FUSE_URING_CMD_COMMIT_AND_FETCH, e->r.in.unique);
}

static void submit_bio(struct queue *q, struct entry *e)
{
	struct bio *b = &e->r.bio;
	struct cow *cow = q->f->cow;
	struct io_uring_sqe *sqe;

	/* A write that would leave part of an overlay block unfilled: the
	 * tracker's synchronous path (rare: the loop device writes whole
	 * blocks unless a tool writes single sectors). */
	if (b->op == BIO_WRITE && b->done == 0 && cow_write_needs_fill(cow, b->off, b->len)) {
		ssize_t n = cow_pwrite(cow, b->buf, b->len, b->off);
		bio_finish(&e->r, (int)n);
		commit(q, e);
		return;
	}
	if (b->op != BIO_FSYNC && b->done == b->run_end) {
		uint32_t run;
		b->where = cow_route(cow, b->op == BIO_WRITE, b->off + b->done, b->len - b->done, &run,
				     &b->at);
		b->run_start = b->done;
		b->run_end = b->done + run;
	}
	sqe = get_sqe(q);
	if (!sqe) {
		bio_finish(&e->r, -EBUSY);
		commit(q, e);
		return;
	}
	if (b->op == BIO_FSYNC) {
		io_uring_prep_fsync(sqe, cow_base_fd(cow, false), IORING_FSYNC_DATASYNC);
	} else {
		/* The buffer is the entry's payload: where it is registered,
		 * the kernel need not pin its pages for the O_DIRECT transfer. */
		int fd = bio_fd(q->f, b);
		uint8_t *buf = (uint8_t *)b->buf + b->done;
		uint32_t n = b->run_end - b->done;
		if (b->op == BIO_READ)
			io_uring_prep_read(sqe, fd, buf, n, bio_pos(b));
		else
			io_uring_prep_write(sqe, fd, buf, n, bio_pos(b));
		if (q->fixed_bufs && buf + n <= e->payload + FIXED_BYTES) {
			sqe->opcode = b->op == BIO_READ ? IORING_OP_READ_FIXED : IORING_OP_WRITE_FIXED;
			sqe->buf_index = (uint16_t)(e - q->e);
		}
	}
	io_uring_sqe_set_data(sqe, &e->io_tag);
}

/* A request arrived in entry e. */
static void on_request(struct queue *q, struct entry *e)
{
	struct freq *r = &e->r;

	memcpy(&r->in, e->hdr->in_out, sizeof(r->in));
	r->f = q->f;
	r->arg = (const uint8_t *)e->hdr->op_in;
	r->payload = e->payload;
	r->payload_len = e->hdr->ent.payload_sz;
	r->out = e->payload;
	r->out_cap = MAX_WRITE;
	r->entered = false;
	if (gated(r->in.opcode)) {
		if (!cow_enter(q->f->cow)) {
			/* The tracker holds I/O for a moment: park it. */
			e->parked_next = q->parked;
			q->parked = e;
			return;
		}
		r->entered = true;
	}
	handle(r);
	r->bio.done = r->bio.run_start = r->bio.run_end = 0;
	r->bio.retried = false;
	if (r->bio.op != BIO_NONE && r->error == 0)
		submit_bio(q, e);
	else
		commit(q, e);
}

/* The tracker's gate opened: the parked requests go again. */
static void on_wake(struct queue *q)
{
	struct entry *e = q->parked;
	struct io_uring_sqe *sqe = get_sqe(q);

	if (sqe) {
		io_uring_prep_read(sqe, q->wake_fd, &q->wake_buf, sizeof(q->wake_buf), 0);
		io_uring_sqe_set_data(sqe, &q->wake_tag);
	}
	q->parked = NULL;
	while (e) {
		struct entry *next = e->parked_next;
		on_request(q, e);
		e = next;
	}
}

static void wake_queues(void *arg)
{
	struct frontend *f = arg;

	for (int i = 0; f->q && i < f->nq; i++)
		if (f->q[i].wake_fd >= 0)
			eventfd_write(f->q[i].wake_fd, 1);
}

static void on_bio(struct queue *q, struct entry *e, int res)
{
	struct bio *b = &e->r.bio;

	if (res == -EAGAIN || res == -EINTR) {
		submit_bio(q, e);
		return;
	}
	if (res == 0 && b->op == BIO_WRITE)
		res = -EIO; /* the end of a block device */
	if (res < 0 && b->op == BIO_WRITE && b->where == COW_OVERLAY) {
		/* If the overlay is full, the snapshot fails and the run is
		 * written again, to the base. */
		if (!b->retried && cow_overlay_error(q->f->cow, res)) {
			b->retried = true;
			b->done = b->run_end = b->run_start;
			submit_bio(q, e);
			return;
		}
	}
	if (res > 0 && b->op != BIO_FSYNC) {
		b->done += (uint32_t)res;
		if (b->op == BIO_WRITE && b->done == b->run_end)
			cow_written(q->f->cow, b->where, b->off + b->run_start,
				    b->run_end - b->run_start, b->at);
		if (b->done < b->len) {
			submit_bio(q, e); /* the rest of the run, or the next run */
			return;
		}
	}
	if (res >= 0 && b->op == BIO_FSYNC)
		res = cow_sync_overlay(q->f->cow);
	bio_finish(&e->r, res < 0 ? res : b->op == BIO_FSYNC ? 0 : (int)b->done);
	commit(q, e);
}

static void *queue_thread(void *arg)
{
	struct queue *q = arg;
	int live = URING_ENTRIES;
	cpu_set_t cpus;

	CPU_ZERO(&cpus);
	CPU_SET(q->qid, &cpus);
	pthread_setaffinity_np(pthread_self(), sizeof(cpus), &cpus);
	for (int i = 0; i < URING_ENTRIES; i++) {
		q->e[i].live = true;
		submit_cmd(q, &q->e[i], FUSE_URING_CMD_REGISTER, 0);
	}
	on_wake(q); /* arms the read of wake_fd */
	while (live > 0) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;

		int r = io_uring_submit_and_wait(&q->ring, 1);
		if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
			break;
		io_uring_for_each_cqe(&q->ring, head, cqe) {
			struct tag *t = io_uring_cqe_get_data(cqe);
			int res = cqe->res;
			seen++;
			if (!t)
				continue;
			if (t->kind == TAG_WAKE) {
				on_wake(q);
			} else if (t->kind == TAG_IO) {
				struct entry *e = (struct entry *)((uint8_t *)t -
								   offsetof(struct entry, io_tag));
				on_bio(q, e, res);
			} else {
				struct entry *e = (struct entry *)((uint8_t *)t -
								   offsetof(struct entry, cmd_tag));
				if (res == 0) {
					on_request(q, e);
				} else if (e->live) {
					/* -ENOTCONN at teardown; anything else at
					 * REGISTER means io_uring is not usable. */
					if (res != -ENOTCONN && res != -ENODEV)
						atomic_store(&q->f->register_err, res);
					e->live = false;
					live--;
				}
			}
		}
		io_uring_cq_advance(&q->ring, seen);
	}
	return NULL;
}

/* Registers the start of each entry's payload as a fixed buffer and
 * /dev/fuse as a fixed file: less work per request (no page pinning for
 * a small backing transfer, no file reference per command). Only the
 * first FIXED_BYTES: registering pins the pages, and whole payloads would
 * pin 32 MiB per CPU and disk, where small random I/O (whose per-request
 * costs count) touches a page of each. Either registration may fail
 * (locked memory limits when not root): the queue goes on without it. */
static void register_ring(struct queue *q, uint8_t *payloads)
{
	struct iovec bufs[URING_ENTRIES];

	for (int k = 0; k < URING_ENTRIES; k++)
		bufs[k] = (struct iovec){payloads + (size_t)k * MAX_WRITE, FIXED_BYTES};
	q->fixed_bufs = io_uring_register_buffers(&q->ring, bufs, URING_ENTRIES) == 0;
	q->fixed_dev = io_uring_register_files(&q->ring, &q->f->devfd, 1) == 0;
}

static int start_queues(struct frontend *f)
{
	size_t bytes = (size_t)URING_ENTRIES * MAX_WRITE;

	f->q = calloc((size_t)f->nq, sizeof(*f->q));
	if (!f->q)
		return -ENOMEM;
	for (int i = 0; i < f->nq; i++)
		f->q[i].wake_fd = -1;
	for (int i = 0; i < f->nq; i++) {
		struct queue *q = &f->q[i];
		struct io_uring_params p = {0};
		uint8_t *payloads;
		int r;

		q->f = f;
		q->qid = i;
		q->wake_tag.kind = TAG_WAKE;
		q->wake_fd = eventfd(0, EFD_CLOEXEC);
		if (q->wake_fd < 0)
			return -errno;
		p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
		p.cq_entries = URING_ENTRIES * 4;
		r = io_uring_queue_init_params(URING_ENTRIES * 2, &q->ring, &p);
		if (r < 0)
			return r;
		q->ring_ok = true;
		q->e = calloc(URING_ENTRIES, sizeof(*q->e));
		if (!q->e || posix_memalign((void **)&payloads, 4096, bytes))
			return -ENOMEM;
		register_ring(q, payloads);
		for (int k = 0; k < URING_ENTRIES; k++) {
			struct entry *e = &q->e[k];
			e->q = q;
			e->cmd_tag.kind = TAG_CMD;
			e->io_tag.kind = TAG_IO;
			e->payload = payloads + (size_t)k * MAX_WRITE;
			e->hdr = calloc(1, sizeof(*e->hdr));
			if (!e->hdr)
				return -ENOMEM;
			e->iov[0] = (struct iovec){e->hdr, sizeof(*e->hdr)};
			e->iov[1] = (struct iovec){e->payload, MAX_WRITE};
		}
		if (pthread_create(&q->thread, NULL, queue_thread, q) != 0)
			return -EAGAIN;
		q->started = true;
	}
	return 0;
}

static void free_queues(struct frontend *f)
{
	for (int i = 0; f->q && i < f->nq; i++) {
		struct queue *q = &f->q[i];
		if (q->ring_ok)
			io_uring_queue_exit(&q->ring);
		if (q->wake_fd >= 0)
			close(q->wake_fd);
		if (q->e) {
			free(q->e[0].payload);
			for (int k = 0; k < URING_ENTRIES; k++)
				free(q->e[k].hdr);
		}
		free(q->e);
	}
	free(f->q);
	f->q = NULL;
}

/* ---- mount, INIT, loop device --------------------------------------------------------- */

static int possible_cpus(void)
{
	FILE *fp = fopen("/sys/devices/system/cpu/possible", "re");
	int lo = 0, hi = 0;

	if (!fp)
		return (int)MAX(1L, sysconf(_SC_NPROCESSORS_CONF));
	if (fscanf(fp, "%d-%d", &lo, &hi) < 1)
		hi = 0;
	fclose(fp);
	return MAX(hi, lo) + 1;
}

int frontend_enable_uring(bool on)
{
	int fd = open("/sys/module/fuse/parameters/enable_uring", O_WRONLY | O_CLOEXEC);
	int r = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, on ? "Y" : "N", 1) != 1)
		r = -errno;
	close(fd);
	return r;
}

/* Reads FUSE_INIT and answers it; *uring says whether the kernel offers
 * FUSE over io_uring and we asked for it. */
static int fuse_init(struct frontend *f, bool want_uring, bool *uring)
{
	uint8_t buf[8192];
	struct fuse_in_header in;
	struct fuse_init_in ii = {0};
	struct {
		struct fuse_out_header oh;
		struct fuse_init_out io;
	} out;
	uint64_t kflags, flags;
	ssize_t n = read(f->devfd, buf, sizeof(buf));

	if (n < (ssize_t)sizeof(in))
		return n < 0 ? -errno : -EIO;
	memcpy(&in, buf, sizeof(in));
	if (in.opcode != FUSE_INIT)
		return -EPROTO;
	memcpy(&ii, buf + sizeof(in), MIN((size_t)n - sizeof(in), sizeof(ii)));
	if (ii.major != 7 || ii.minor < 36)
		return -EPROTONOSUPPORT;
	kflags = ii.flags;
	if (kflags & FUSE_INIT_EXT)
		kflags |= (uint64_t)ii.flags2 << 32;
	*uring = want_uring && (kflags & FUSE_OVER_IO_URING_FLAG);
	flags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES | FUSE_INIT_EXT;
	if (*uring)
		flags |= FUSE_OVER_IO_URING_FLAG;
	flags &= kflags;
	memset(&out, 0, sizeof(out));
	out.io.major = 7;
	out.io.minor = MIN(ii.minor, 45u);
	out.io.max_readahead = ii.max_readahead;
	out.io.flags = (uint32_t)flags;
	out.io.flags2 = (uint32_t)(flags >> 32);
	out.io.max_background = 256;
	out.io.congestion_threshold = 192;
	out.io.max_write = MAX_WRITE;
	out.io.time_gran = 1;
	out.io.max_pages = MAX_PAGES;
	out.oh.len = sizeof(out);
	out.oh.unique = in.unique;
	if (write(f->devfd, &out, sizeof(out)) != (ssize_t)sizeof(out))
		return -errno;
	f->kernel_minor = ii.minor;
	return 0;
}

static int mount_fuse(struct frontend *f)
{
	char opts[256];

	f->devfd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (f->devfd < 0)
		return errno == ENOENT ? -EOPNOTSUPP : -errno;
	snprintf(opts, sizeof(opts),
		 "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,max_read=%u", f->devfd,
		 MAX_WRITE);
	if (mount("dsnap", f->mnt, "fuse.dsnap",
		  MS_NOSUID | MS_NODEV | MS_NOATIME | (f->read ? MS_RDONLY : 0), opts) < 0)
		return -errno;
	f->mounted = true;
	return 0;
}

static int attach_loop(struct frontend *f)
{
	struct loop_config cfg = {0};
	int ctl, nr, fd = -1, r = 0;

	f->file_fd = open(f->file, (f->read ? O_RDONLY : O_RDWR) | O_DIRECT | O_CLOEXEC);
	if (f->file_fd < 0)
		return -errno;
	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		return errno == ENOENT ? -EOPNOTSUPP : -errno;
	for (int tries = 0; tries < 16; tries++) {
		nr = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (nr < 0) {
			r = -errno;
			break;
		}
		snprintf(f->loopdev, sizeof(f->loopdev), "/dev/loop%d", nr);
		fd = open(f->loopdev, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			r = -errno;
			break;
		}
		cfg.fd = (uint32_t)f->file_fd;
		cfg.info.lo_flags = LO_FLAGS_DIRECT_IO | (f->read ? LO_FLAGS_READ_ONLY : 0);
		/* 64 bytes: informative only; sysfs has the full backing path. */
		memcpy(cfg.info.lo_file_name, f->file,
		       MIN(strlen(f->file), sizeof(cfg.info.lo_file_name) - 1));
		if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) {
			r = 0;
			break;
		}
		r = -errno;
		close(fd);
		fd = -1;
		if (r != -EBUSY)
			break; /* someone took that device first: try the next */
	}
	close(ctl);
	if (fd >= 0)
		close(fd);
	/* The loop device holds its own reference to the file. dsnapd must
	 * never keep a file of its own mount open: if it dies, closing that
	 * file at exit sends FUSE_FLUSH to the dying server itself and the
	 * exit never finishes (seen with kill -9). */
	close(f->file_fd);
	f->file_fd = -1;
	if (r < 0)
		f->loopdev[0] = '\0';
	return r;
}

static int detach_loop(struct frontend *f, bool force)
{
	int fd;

	if (!f->loopdev[0])
		return 0;
	/* O_EXCL fails while the device is mounted or held exclusively. */
	fd = open(f->loopdev, O_RDONLY | O_CLOEXEC | (force ? 0 : O_EXCL));
	if (fd < 0)
		return errno == EBUSY ? -EBUSY : -errno;
	if (ioctl(fd, LOOP_CLR_FD) < 0 && errno != ENXIO) {
		int r = -errno;
		close(fd);
		return r;
	}
	close(fd);
	f->loopdev[0] = '\0';
	return 0;
}

/* Aborts a FUSE connection through fusectl (mounted on a scratch folder
 * when it is not mounted already). */
static void abort_connection(const char *mnt)
{
	char ctl[PATH_MAX + 64], dir[] = "/tmp/dsnap-fusectl.XXXXXX";
	struct stat st;
	bool mounted_here = false;
	int fd;

	if (stat(mnt, &st) < 0)
		return;
	snprintf(ctl, sizeof(ctl), "/sys/fs/fuse/connections/%u/abort", minor(st.st_dev));
	if (access(ctl, W_OK) < 0 && mkdtemp(dir) &&
	    mount("fusectl", dir, "fusectl", 0, NULL) == 0) {
		mounted_here = true;
		snprintf(ctl, sizeof(ctl), "%s/%u/abort", dir, minor(st.st_dev));
	}
	fd = open(ctl, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, "1", 1) < 0)
			log_warn("frontend: cannot abort the FUSE connection of %s", mnt);
		close(fd);
	}
	if (mounted_here)
		umount2(dir, MNT_DETACH);
	rmdir(dir);
}

static void stop_threads(struct frontend *f)
{
	struct timespec ts;

	for (int i = 0; f->q && i < f->nq; i++) {
		if (!f->q[i].started)
			continue;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 5;
		if (pthread_timedjoin_np(f->q[i].thread, NULL, &ts) != 0) {
			abort_connection(f->mnt);
			pthread_join(f->q[i].thread, NULL);
		}
		f->q[i].started = false;
	}
	for (int i = 0; i < f->ndev; i++) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 5;
		if (pthread_timedjoin_np(f->dev[i], NULL, &ts) != 0) {
			abort_connection(f->mnt);
			pthread_join(f->dev[i], NULL);
		}
	}
	f->ndev = 0;
}

static void teardown(struct frontend *f)
{
	if (f->file_fd >= 0)
		close(f->file_fd);
	f->file_fd = -1;
	if (f->mounted) {
		/* Unmounting fails every entry (-ENOTCONN) and read (ENODEV):
		 * the threads end. A busy mount is detached lazily. */
		if (umount2(f->mnt, 0) < 0 && umount2(f->mnt, MNT_DETACH) < 0)
			abort_connection(f->mnt);
		f->mounted = false;
	}
	stop_threads(f);
	if (f->cow)
		cow_set_wake(f->cow, NULL, NULL);
	free_queues(f);
	for (int i = 1; i < DEV_THREADS; i++)
		if (f->dev_fds[i] > 0)
			close(f->dev_fds[i]);
	if (f->devfd >= 0)
		close(f->devfd);
	free(f);
}

static struct frontend *frontend_new(const char *mountpoint, uint64_t size)
{
	struct frontend *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->devfd = f->file_fd = -1;
	f->size = size;
	snprintf(f->mnt, sizeof(f->mnt), "%s", mountpoint);
	snprintf(f->file, sizeof(f->file), "%s/disk", mountpoint);
	f->nq = possible_cpus();
	return f;
}

int frontend_attach(struct cow *cow, const char *name, const char *mountpoint,
		    enum frontend_transport transport, struct frontend **out)
{
	struct frontend *f = frontend_new(mountpoint, cow_size(cow));
	bool uring = false;
	int r;

	if (!f)
		return -ENOMEM;
	f->cow = cow;
	r = mount_fuse(f);
	if (r == 0)
		r = fuse_init(f, transport != FRONTEND_DEV, &uring);
	if (r == 0 && transport == FRONTEND_URING && !uring)
		r = -EOPNOTSUPP;
	if (r < 0)
		goto err;
	f->uring = uring;
	if (uring) {
		/* FORGET and INTERRUPT still come through /dev/fuse. */
		r = start_dev_threads(f, 1);
		if (r == 0)
			r = start_queues(f);
		if (r == 0)
			cow_set_wake(cow, wake_queues, f);
	} else {
		r = start_dev_threads(f, DEV_THREADS);
	}
	if (r == 0)
		r = attach_loop(f);
	if (r == 0 && atomic_load(&f->register_err))
		r = atomic_load(&f->register_err);
	if (r < 0)
		goto err;
	log_info("frontend: %s served on %s over %s", name, f->loopdev,
		 frontend_transport_name(f));
	*out = f;
	return 0;
err:
	detach_loop(f, true);
	teardown(f);
	return r;
}

int frontend_attach_reader(frontend_read_fn read, void *arg, uint64_t size, const char *name,
			   const char *mountpoint, struct frontend **out)
{
	struct frontend *f = frontend_new(mountpoint, size);
	bool uring = false;
	int r;

	if (!f)
		return -ENOMEM;
	f->read = read;
	f->read_arg = arg;
	/* /dev/fuse: its threads may block in read (an io_uring queue's may not). */
	r = mount_fuse(f);
	if (r == 0)
		r = fuse_init(f, false, &uring);
	if (r == 0)
		r = start_dev_threads(f, DEV_THREADS);
	if (r == 0)
		r = attach_loop(f);
	if (r < 0) {
		detach_loop(f, true);
		teardown(f);
		return r;
	}
	log_info("frontend: %s served read-only on %s", name, f->loopdev);
	*out = f;
	return 0;
}

const char *frontend_device(const struct frontend *f)
{
	return f->loopdev;
}

const char *frontend_transport_name(const struct frontend *f)
{
	return f->uring ? "io_uring" : "/dev/fuse";
}

int frontend_detach(struct frontend *f, bool force)
{
	int r = detach_loop(f, force);

	if (r < 0)
		return r;
	teardown(f);
	return 0;
}

int frontend_cleanup_stale(const char *mountpoint)
{
	char file[PATH_MAX + 8];
	DIR *d = opendir("/sys/block");
	struct dirent *de;
	int r = 0;

	snprintf(file, sizeof(file), "%s/disk", mountpoint);
	while (d && (de = readdir(d))) {
		char path[PATH_MAX], backing[PATH_MAX + 16] = "";
		FILE *bf;
		int fd;

		if (strncmp(de->d_name, "loop", 4) != 0)
			continue;
		snprintf(path, sizeof(path), "/sys/block/%s/loop/backing_file", de->d_name);
		bf = fopen(path, "re");
		if (!bf)
			continue;
		if (!fgets(backing, sizeof(backing), bf))
			backing[0] = '\0';
		fclose(bf);
		backing[strcspn(backing, "\n")] = '\0';
		if (strcmp(backing, file) != 0)
			continue;
		snprintf(path, sizeof(path), "/dev/%s", de->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || ioctl(fd, LOOP_CLR_FD) < 0)
			r = -errno;
		else
			log_info("frontend: detached stale %s from %s", path, file);
		if (fd >= 0)
			close(fd);
	}
	if (d)
		closedir(d);
	/* A dead server's mount answers ENOTCONN; unmount it lazily. */
	if (umount2(mountpoint, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
		r = r ? r : -errno;
	return r;
}
