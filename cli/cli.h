/* Shared by the dsnap command's files. */
#ifndef DSNAP_CLI_H
#define DSNAP_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <dsnap/api.h>

/* Exit codes (documented in dsnap(8)). */
enum {
	EXIT_FAIL = 1,    /* the request failed (an API error answer, 4xx) */
	EXIT_USAGE = 2,   /* bad command line */
	EXIT_DAMAGE = 3,  /* verify found bad chunks */
	EXIT_CONNECT = 4, /* dsnapd cannot be reached */
	EXIT_SERVER = 5,  /* dsnapd answered with a server error (5xx) */
};

void make_parents(const char *path);
int parse_size(const char *s, uint64_t *out);
int store_main(int argc, char **argv, const char *store_dir, bool quiet);

/* Where requests go: dsnapd over its socket, or this process. */
struct client;
/* socket NULL with local true: in this process on state_dir. */
int client_open(const char *socket, bool local, const char *state_dir, struct client **out);
void client_close(struct client *c);
bool client_is_local(const struct client *c);
/*
 * Sends one request; *status and *body (JSON text, yours to free) come back.
 * Returns 0, or -errno when the daemon could not be reached or answered
 * something that is not HTTP.
 */
int client_call(struct client *c, const struct ds_api_param *p, size_t n, int *status,
		char **body);

#endif
