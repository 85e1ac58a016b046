/*
 * How dsnap reaches the API: HTTP/1.1 over dsnapd's Unix socket (one
 * request per connection, form-encoded POST), or the API itself in this
 * process on a state folder (--local), which answers the same way.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <dsnap/api.h>
#include <dsnap/engine.h>

#include "cli.h"

struct client {
	char socket[108];
	struct ds_engine *engine; /* local */
	struct ds_api *api;       /* local */
};

int client_open(const char *socket, bool local, const char *state_dir, struct client **out)
{
	struct client *c = calloc(1, sizeof(*c));
	int r;

	if (!c)
		return -ENOMEM;
	if (!local) {
		if (strlen(socket) >= sizeof(c->socket)) {
			free(c);
			return -ENAMETOOLONG;
		}
		snprintf(c->socket, sizeof(c->socket), "%s", socket);
		*out = c;
		return 0;
	}
	make_parents(state_dir);
	r = ds_engine_open(state_dir, NULL, &c->engine);
	if (r == 0)
		r = ds_api_new(c->engine, NULL, &c->api);
	if (r < 0) {
		client_close(c);
		return r;
	}
	*out = c;
	return 0;
}

void client_close(struct client *c)
{
	if (!c)
		return;
	ds_api_free(c->api);
	ds_engine_close(c->engine);
	free(c);
}

bool client_is_local(const struct client *c)
{
	return c->engine != NULL;
}

struct buf {
	char *p;
	size_t len, cap;
};

static int buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap * 2 > b->len + n + 1 ? b->cap * 2 : b->len + n + 1024;
		char *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

static int buf_escaped(struct buf *b, const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	int r = 0;

	for (size_t i = 0; i < len && r == 0; i++) {
		unsigned char ch = (unsigned char)s[i];
		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		    ch == '-' || ch == '_' || ch == '.' || ch == '~') {
			r = buf_add(b, (const char *)&ch, 1);
		} else {
			char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
			r = buf_add(b, e, 3);
		}
	}
	return r;
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -errno;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Splits a whole HTTP response into status and body (Content-Length or
 * until close; the daemon sends Connection: close). */
static int parse_response(struct buf *in, int *status, char **body)
{
	char *hdr_end = strstr(in->p, "\r\n\r\n");
	int major, minor;

	if (!hdr_end || sscanf(in->p, "HTTP/%d.%d %d", &major, &minor, status) != 3)
		return -EPROTO;
	*body = strdup(hdr_end + 4);
	return *body ? 0 : -ENOMEM;
}

int client_call(struct client *c, const struct ds_api_param *p, size_t n, int *status,
		char **body)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct buf form = {0}, req = {0}, in = {0};
	char head[512], chunk[65536];
	int fd, r = 0;

	if (client_is_local(c)) {
		struct ds_api_caller caller = {getuid(), getgid(), getpid()};
		struct ds_api_response resp;
		ds_api_handle(c->api, &caller, p, n, &resp);
		*status = resp.status;
		*body = resp.body;
		return 0;
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		if (i > 0)
			r = buf_add(&form, "&", 1);
		if (r == 0)
			r = buf_escaped(&form, p[i].key, strlen(p[i].key));
		if (r == 0)
			r = buf_add(&form, "=", 1);
		if (r == 0)
			r = buf_escaped(&form, p[i].value, p[i].len);
	}
	snprintf(head, sizeof(head),
		 "POST / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: dsnap/%s\r\n"
		 "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %zu\r\n"
		 "Connection: close\r\n\r\n",
		 DS_VERSION_STRING, form.len);
	if (r == 0)
		r = buf_add(&req, head, strlen(head));
	if (r == 0 && form.len)
		r = buf_add(&req, form.p, form.len);
	free(form.p);
	if (r < 0) {
		free(req.p);
		return r;
	}
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", c->socket);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = -errno;
		if (fd >= 0)
			close(fd);
		free(req.p);
		return r;
	}
	r = write_all(fd, req.p, req.len);
	free(req.p);
	while (r == 0) {
		ssize_t got = read(fd, chunk, sizeof(chunk));
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			r = -errno;
		if (got <= 0)
			break;
		r = buf_add(&in, chunk, (size_t)got);
	}
	close(fd);
	if (r == 0)
		r = in.p ? parse_response(&in, status, body) : -EPROTO;
	free(in.p);
	return r;
}
