/*
 * dsnap: the command-line client.
 *
 * `dsnap create-snapshot --disk-id d-… --snapshot-name nightly --tag env=dev`
 * is the API call CreateSnapshot with DiskId, SnapshotName, Tag.1.Key and
 * Tag.1.Value: a command is its action in kebab-case and each --flag-name
 * is the parameter FlagName, so every action and parameter of the API is
 * reachable and named the same. `dsnap call Action Key=Value…` sends a raw
 * request. Requests go to dsnapd over its socket (--socket, $DSNAP_SOCKET,
 * or the default one when a daemon answers there), or run in this process
 * on the state folder (--local, or when no daemon answers).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include <dsnap/api.h>

#include "cli.h"

static bool quiet, output_json;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsnap [GLOBAL OPTIONS] COMMAND [--parameter-name VALUE]... [--tag KEY=VALUE]...\n"
		"       dsnap [GLOBAL OPTIONS] call ACTION [Key=Value]...\n"
		"       dsnap [--store DIR] store COMMAND [ARGS]\n"
		"\n"
		"Commands are the API's actions in kebab-case; --parameter-name is the parameter\n"
		"ParameterName (--disk-id is DiskId). --tag KEY=VALUE adds Tag.N.Key/Tag.N.Value;\n"
		"--snapshot-ids and --disk-ids take a comma-separated list or a JSON array.\n"
		"  register-disk --path PATH [--disk-name NAME]\n"
		"  create-disk --size GIB | --snapshot-id ID [--disk-name NAME]\n"
		"  describe-disks [--disk-ids IDS] [--max-results N] [--next-token T]\n"
		"  delete-disk --disk-id ID\n"
		"  attach-disk --disk-id ID | detach-disk --disk-id ID\n"
		"                  serve a disk as a loop device through dsnapd (root)\n"
		"  create-snapshot --disk-id ID [--snapshot-name NAME] [--description TEXT]\n"
		"                  [--retention-days N] [--client-token T] [--tag K=V]...\n"
		"                  [--resource-group-id RG] [--wait]\n"
		"  describe-snapshots [--disk-id ID] [--snapshot-ids IDS] [--status S] [--tag K=V]...\n"
		"  modify-snapshot-attribute --snapshot-id ID [--snapshot-name N] [--description D]\n"
		"                  [--retention-days N]\n"
		"  delete-snapshot --snapshot-id ID\n"
		"  describe-snapshots-usage\n"
		"  reset-disk --disk-id ID --snapshot-id ID\n"
		"  create-resource-group --name NAME | list-resource-groups |\n"
		"  delete-resource-group --resource-group-id RG\n"
		"  export-snapshot --snapshot-id ID --path NEW-FILE     (local action)\n"
		"  verify-snapshot --snapshot-id ID                     (local action)\n"
		"  attach-snapshot --snapshot-id ID | detach-snapshot --snapshot-id ID\n"
		"                  serve a snapshot read-only as a loop device, also while\n"
		"                  it is being copied (root; local action)\n"
		"  collect-garbage (or gc)                              (local action)\n"
		"\n"
		"Global options:\n"
		"  --socket PATH     dsnapd's socket (default $DSNAP_SOCKET, else dsnapd's default)\n"
		"  --local           run the request in this process, on the state folder\n"
		"  --state DIR       state folder for --local (default $DSNAP_STATE, else dsnapd's)\n"
		"  --output json|table   answer format (default table)\n"
		"  --quiet           no progress output\n"
		"Without --socket or --local, dsnap uses the default socket when dsnapd answers\n"
		"there, else runs the request in this process.\n"
		"\n"
		"Store commands (a bare chunk store, no catalog; ids are manifest ids):\n"
		"  store init [--chunk-size SIZE] | store snapshot IMAGE | store restore ID FILE\n"
		"  store verify | store stats | store gc --keep ID... | --keep-none\n"
		"\n"
		"Exit codes: 0 ok; 1 the request failed (the API's error code is printed);\n"
		"2 bad usage; 3 damage found; 4 dsnapd cannot be reached; 5 dsnapd failed (5xx).\n");
}

/* ---- parameters ------------------------------------------------------------ */

struct params {
	struct ds_api_param *v;
	size_t n, cap;
};

static int add_param(struct params *p, const char *key, const char *value)
{
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 16;
		struct ds_api_param *v = realloc(p->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		p->v = v;
		p->cap = cap;
	}
	p->v[p->n].key = strdup(key);
	p->v[p->n].value = strdup(value);
	if (!p->v[p->n].key || !p->v[p->n].value)
		return -ENOMEM;
	p->v[p->n].len = strlen(value);
	p->n++;
	return 0;
}

/* create-snapshot -> CreateSnapshot; disk-id -> DiskId. */
static void camel(const char *kebab, char *out, size_t size)
{
	size_t k = 0;
	bool up = true;

	for (const char *s = kebab; *s && k + 1 < size; s++) {
		if (*s == '-') {
			up = true;
			continue;
		}
		out[k++] = up && *s >= 'a' && *s <= 'z' ? (char)(*s - 'a' + 'A') : *s;
		up = false;
	}
	out[k] = '\0';
}

static void kebab(const char *camel_name, char *out, size_t size);

/* build() returns it after printing a command's help: exit 0. */
#define HELP_SHOWN (-1)

/* An action's flags from the API's own table, each printed as pre--FLAGpost,
 * then tag and wait where --tag and --wait apply. */
static void print_flags(const char *action, const char *pre, const char *post, const char *tag,
			const char *wait)
{
	bool tags = false;
	const char *const *params = ds_api_action_params(action, &tags);
	char flag[160];

	for (size_t i = 0; params && params[i]; i++) {
		kebab(params[i], flag, sizeof(flag));
		printf("%s--%s%s", pre, flag, post);
	}
	if (tags)
		printf("%s", tag);
	if (strcmp(action, "CreateSnapshot") == 0)
		printf("%s", wait);
}

/* dsnap COMMAND --help: the command's flags. */
static void command_help(const char *command, const char *action)
{
	printf("usage: dsnap [GLOBAL OPTIONS] %s", command);
	print_flags(action, " [", " VALUE]", " [--tag KEY=VALUE]...", " [--wait]");
	printf("\nSends the %s action; each flag is the parameter of the same name in\n"
	       "doc/dsnapd.md (--disk-id is DiskId). Lists take \"a,b\" or a JSON array.\n",
	       action);
}

/* "a,b" -> ["a","b"]; a value already starting with '[' is left alone. */
static char *id_list(const char *v)
{
	json_object *arr;
	char *copy, *save = NULL, *out;

	if (v[0] == '[')
		return strdup(v);
	arr = json_object_new_array();
	copy = strdup(v);
	if (!arr || !copy) {
		json_object_put(arr);
		free(copy);
		return NULL;
	}
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
		json_object_array_add(arr, json_object_new_string(t));
	out = strdup(json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN));
	json_object_put(arr);
	free(copy);
	return out;
}

/* ---- output ----------------------------------------------------------------- */

static const char *str(json_object *o, const char *key)
{
	json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

/* Columns for the lists the API answers. */
static const struct {
	const char *outer, *inner;
	const char *cols[8];
	int widths[8];
} tables[] = {
	{"Snapshots", "Snapshot",
	 {"SnapshotId", "SourceDiskId", "Status", "Progress", "SourceDiskSize", "CreationTime",
	  "SnapshotName", NULL},
	 {22, 22, 12, 8, 14, 20, 0}},
	{"Disks", "Disk",
	 {"DiskId", "Status", "Size", "FsType", "Present", "SourcePath", "DiskName", NULL},
	 {22, 10, 6, 8, 7, 0, 0}},
	{"ResourceGroups", "ResourceGroup", {"Id", "Name", "CreateDate", NULL}, {24, 30, 0}},
};

static void print_table(json_object *body)
{
	for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++) {
		json_object *outer, *list;
		if (!json_object_object_get_ex(body, tables[t].outer, &outer) ||
		    !json_object_object_get_ex(outer, tables[t].inner, &list))
			continue;
		for (int c = 0; tables[t].cols[c]; c++)
			printf("%-*s ", tables[t].widths[c], tables[t].cols[c]);
		printf("\n");
		for (size_t i = 0; i < json_object_array_length(list); i++) {
			json_object *row = json_object_array_get_idx(list, i);
			for (int c = 0; tables[t].cols[c]; c++)
				printf("%-*s ", tables[t].widths[c], str(row, tables[t].cols[c]));
			printf("\n");
		}
		if (*str(body, "NextToken"))
			printf("(more: --next-token %s)\n", str(body, "NextToken"));
		return;
	}
	/* An id the action made is printed alone, for scripts. */
	static const char *const ids[] = {"SnapshotId", "DiskId", "ResourceGroupId", NULL};
	for (int i = 0; ids[i]; i++) {
		if (*str(body, ids[i]) && json_object_object_length(body) == 2) {
			printf("%s\n", str(body, ids[i]));
			return;
		}
	}
	json_object_object_foreach(body, k, v)
	{
		if (strcmp(k, "RequestId") != 0)
			printf("%s: %s\n", k, json_object_get_string(v));
	}
}

/* Prints an answer; returns the exit code. */
static int show(int status, const char *text)
{
	json_object *body = json_tokener_parse(text);
	int rc = status >= 500 ? EXIT_SERVER : status >= 400 ? EXIT_FAIL : 0;

	if (!body) {
		fprintf(stderr, "dsnap: the answer is not JSON (HTTP %d): %.200s\n", status, text);
		return rc ? rc : EXIT_SERVER;
	}
	if (rc) {
		if (output_json)
			printf("%s\n", json_object_to_json_string_ext(body, JSON_C_TO_STRING_PRETTY));
		fprintf(stderr, "dsnap: %s: %s (RequestId %s)\n", str(body, "Code"),
			str(body, "Message"), str(body, "RequestId"));
	} else if (output_json) {
		printf("%s\n", json_object_to_json_string_ext(body, JSON_C_TO_STRING_PRETTY |
									   JSON_C_TO_STRING_NOSLASHESCAPE));
	} else {
		print_table(body);
	}
	if (rc == 0 && json_object_object_get_ex(body, "BadChunks", NULL) &&
	    json_object_get_int64(json_object_object_get(body, "BadChunks")) > 0)
		rc = EXIT_DAMAGE;
	json_object_put(body);
	return rc;
}

/* ---- talking to the API ---------------------------------------------------------- */

static int call(struct client *c, struct params *p, int *status, char **body)
{
	int r = client_call(c, p->v, p->n, status, body);

	if (r < 0) {
		fprintf(stderr, "dsnap: cannot reach dsnapd: %s\n", strerror(-r));
		return EXIT_CONNECT;
	}
	return 0;
}

/* Follows a snapshot to its end: a bar on a terminal, JSON lines otherwise. */
static int wait_snapshot(struct client *c, const char *id)
{
	char ids[96], status[32] = "", progress[16] = "";
	bool tty = isatty(STDERR_FILENO);
	int last = -1;
	struct timespec t0, now;
	useconds_t delay;

	clock_gettime(CLOCK_MONOTONIC, &t0);

	snprintf(ids, sizeof(ids), "[\"%s\"]", id);
	for (;;) {
		struct params p = {0};
		json_object *body, *list, *snap;
		char *text = NULL;
		int st, rc, pct;

		if (add_param(&p, "Action", "DescribeSnapshots") < 0 ||
		    add_param(&p, "SnapshotIds", ids) < 0)
			return EXIT_FAIL;
		rc = call(c, &p, &st, &text);
		ds_api_params_free(p.v, p.n);
		if (rc)
			return rc;
		body = json_tokener_parse(text);
		if (st != 200 || !body) {
			rc = show(st, text);
			free(text);
			json_object_put(body);
			return rc ? rc : EXIT_FAIL;
		}
		free(text);
		if (!json_object_object_get_ex(body, "Snapshots", &list) ||
		    !json_object_object_get_ex(list, "Snapshot", &list) ||
		    json_object_array_length(list) != 1) {
			json_object_put(body);
			fprintf(stderr, "dsnap: snapshot %s is gone\n", id);
			return EXIT_FAIL;
		}
		snap = json_object_array_get_idx(list, 0);
		snprintf(status, sizeof(status), "%s", str(snap, "Status"));
		snprintf(progress, sizeof(progress), "%s", str(snap, "Progress"));
		json_object_put(body);
		pct = atoi(progress);
		if (!quiet && tty) {
			int w = 40, fill = pct * w / 100;
			fprintf(stderr, "\r%s [%.*s%*s] %3d%% %s", id, fill,
				"########################################", w - fill, "", pct, status);
		} else if (!quiet && (pct != last || strcmp(status, "progressing") != 0)) {
			fprintf(stderr, "{\"SnapshotId\":\"%s\",\"Status\":\"%s\",\"Progress\":\"%s\"}\n",
				id, status, progress);
		}
		last = pct;
		if (strcmp(status, "progressing") != 0)
			break;
		/* The end is seen within a tenth of the time waited so far
		 * (from every 10 ms up to every 250 ms): doubling delays
		 * overshot a 0.2 s incremental by half as long again. A poll
		 * costs dsnapd about 0.1 ms. */
		clock_gettime(CLOCK_MONOTONIC, &now);
		delay = (useconds_t)(((now.tv_sec - t0.tv_sec) * 1000000L +
				      (now.tv_nsec - t0.tv_nsec) / 1000) / 10);
		delay = delay < 10000 ? 10000 : delay > 250000 ? 250000 : delay;
		usleep(delay);
	}
	if (!quiet && tty)
		fputc('\n', stderr);
	if (strcmp(status, "accomplished") != 0) {
		fprintf(stderr, "dsnap: snapshot %s ended %s\n", id, status);
		return EXIT_FAIL;
	}
	return 0;
}

/* Sends the request; for CreateSnapshot with wait, follows the copy. */
static int run(struct client *c, struct params *p, bool wait)
{
	char *text = NULL, id[64] = "";
	json_object *body;
	int st, rc = call(c, p, &st, &text);

	if (rc)
		return rc;
	if (!wait || st != 200) {
		rc = show(st, text);
		free(text);
		return rc;
	}
	body = json_tokener_parse(text);
	snprintf(id, sizeof(id), "%s", body ? str(body, "SnapshotId") : "");
	json_object_put(body);
	rc = show(st, text);
	free(text);
	fflush(stdout);
	return rc ? rc : wait_snapshot(c, id);
}

/* ---- completion ------------------------------------------------------------------ */

/* CreateSnapshot -> create-snapshot. */
static void kebab(const char *camel_name, char *out, size_t size)
{
	size_t k = 0;

	for (const char *c = camel_name; *c && k + 2 < size; c++) {
		if (*c >= 'A' && *c <= 'Z') {
			if (c != camel_name)
				out[k++] = '-';
			out[k++] = (char)(*c - 'A' + 'a');
		} else {
			out[k++] = *c;
		}
	}
	out[k] = '\0';
}

/*
 * `dsnap __complete commands` lists the commands; `dsnap __complete flags
 * CMD` the flags of one. The bash completion asks these, so it always
 * matches the API the binary was built with.
 */
static int complete(int argc, char **argv)
{
	char name[128];

	if (argc >= 2 && strcmp(argv[1], "commands") == 0) {
		for (const char *const *a = ds_api_actions(); *a; a++) {
			kebab(*a, name, sizeof(name));
			printf("%s\n", name);
		}
		printf("call\ngc\nstore\n");
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "flags") == 0) {
		camel(argv[2], name, sizeof(name));
		print_flags(name, "", "\n", "--tag\n", "--wait\n");
		return 0;
	}
	return EXIT_USAGE;
}

/* ---- main ---------------------------------------------------------------------------- */

static bool socket_answers(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok;

	if (fd < 0 || strlen(path) >= sizeof(sa.sun_path)) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

/* Builds the request from a command line: "call Action K=V…" or a
 * kebab-case command with --flags. *wait is set by --wait. */
static int build(int argc, char **argv, struct params *p, bool *wait)
{
	char action[128], key[160];
	int tags = 0;

	if (strcmp(argv[0], "call") == 0) {
		if (argc < 2) {
			fprintf(stderr, "dsnap call: give an action\n");
			return EXIT_USAGE;
		}
		if (add_param(p, "Action", argv[1]) < 0)
			return EXIT_FAIL;
		for (int i = 2; i < argc; i++) {
			char *eq = strchr(argv[i], '=');
			if (!eq) {
				fprintf(stderr, "dsnap call: want Key=Value, not %s\n", argv[i]);
				return EXIT_USAGE;
			}
			*eq = '\0';
			if (add_param(p, argv[i], eq + 1) < 0)
				return EXIT_FAIL;
		}
		return 0;
	}
	if (strcmp(argv[0], "gc") == 0)
		snprintf(action, sizeof(action), "CollectGarbage");
	else
		camel(argv[0], action, sizeof(action));
	if (!ds_api_action_params(action, NULL)) {
		fprintf(stderr, "dsnap: unknown command '%s' (dsnap --help lists them; "
				"'dsnap call' sends any action)\n", argv[0]);
		return EXIT_USAGE;
	}
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			command_help(argv[0], action);
			return HELP_SHOWN;
		}
	if (add_param(p, "Action", action) < 0)
		return EXIT_FAIL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v;
		if (strcmp(a, "--wait") == 0) {
			*wait = true;
			continue;
		}
		if (strncmp(a, "--", 2) != 0 || !a[2] || i + 1 >= argc) {
			fprintf(stderr, "dsnap %s: expected --parameter-name VALUE at '%s'\n", argv[0],
				a);
			return EXIT_USAGE;
		}
		v = argv[++i];
		if (strcmp(a, "--tag") == 0) {
			const char *eq = strchr(v, '=');
			char tk[32], tv[32], k[256];
			size_t kl = eq ? (size_t)(eq - v) : strlen(v);
			if (kl >= sizeof(k)) {
				fprintf(stderr, "dsnap: tag key too long\n");
				return EXIT_USAGE;
			}
			memcpy(k, v, kl);
			k[kl] = '\0';
			tags++;
			snprintf(tk, sizeof(tk), "Tag.%d.Key", tags);
			snprintf(tv, sizeof(tv), "Tag.%d.Value", tags);
			if (add_param(p, tk, k) < 0 || (eq && add_param(p, tv, eq + 1) < 0))
				return EXIT_FAIL;
			continue;
		}
		camel(a + 2, key, sizeof(key));
		if (strcmp(key, "SnapshotIds") == 0 || strcmp(key, "DiskIds") == 0) {
			char *list = id_list(v);
			int r = list ? add_param(p, key, list) : -ENOMEM;
			free(list);
			if (r < 0)
				return EXIT_FAIL;
		} else if (add_param(p, key, v) < 0) {
			return EXIT_FAIL;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"socket", required_argument, NULL, 's'},
					      {"state", required_argument, NULL, 'S'},
					      {"store", required_argument, NULL, 'T'},
					      {"local", no_argument, NULL, 'l'},
					      {"output", required_argument, NULL, 'o'},
					      {"quiet", no_argument, NULL, 'q'},
					      {"help", no_argument, NULL, 'h'},
					      {"version", no_argument, NULL, 'V'},
					      {NULL, 0, NULL, 0}};
	char def_socket[108], def_state[PATH_MAX], store[PATH_MAX + 16];
	const char *socket_path = getenv("DSNAP_SOCKET"), *state = getenv("DSNAP_STATE"),
		   *store_dir = getenv("DSNAP_STORE");
	struct params p = {0};
	struct client *c = NULL;
	bool local = false, wait = false;
	int opt, rc, r;

	while ((opt = getopt_long(argc, argv, "+s:S:T:lo:qhV", opts, NULL)) != -1) {
		switch (opt) {
		case 's': socket_path = optarg; break;
		case 'S': state = optarg; break;
		case 'T': store_dir = optarg; break;
		case 'l': local = true; break;
		case 'o':
			if (strcmp(optarg, "json") && strcmp(optarg, "table")) {
				fprintf(stderr, "dsnap: --output is json or table\n");
				return EXIT_USAGE;
			}
			output_json = optarg[0] == 'j';
			break;
		case 'q': quiet = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("dsnap %s\n", DS_VERSION_STRING); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[optind], "__complete") == 0)
		return complete(argc - optind, argv + optind);
	ds_default_paths(def_socket, sizeof(def_socket), def_state, sizeof(def_state));
	if (!state || !*state)
		state = def_state;
	if (strcmp(argv[optind], "store") == 0) {
		if (optind + 1 >= argc) {
			usage(stderr);
			return EXIT_USAGE;
		}
		if (!store_dir || !*store_dir) {
			snprintf(store, sizeof(store), "%s/store", state);
			store_dir = store;
		}
		return store_main(argc - optind - 1, argv + optind + 1, store_dir, quiet);
	}
	rc = build(argc - optind, argv + optind, &p, &wait);
	if (rc) {
		ds_api_params_free(p.v, p.n);
		return rc == HELP_SHOWN ? 0 : rc;
	}
	if (!local && (!socket_path || !*socket_path)) {
		if (socket_answers(def_socket))
			socket_path = def_socket;
		else
			local = true;
	}
	r = client_open(local ? NULL : socket_path, local, state, &c);
	if (r < 0) {
		fprintf(stderr, "dsnap: cannot open %s: %s\n", local ? state : socket_path,
			r == -EBUSY ? "in use by another dsnap process (is dsnapd running? use --socket)"
				    : strerror(-r));
		ds_api_params_free(p.v, p.n);
		return local ? EXIT_FAIL : EXIT_CONNECT;
	}
	/* In this process a copy ends with the process: always follow it. */
	if (client_is_local(c) && strcmp(p.v[0].value, "CreateSnapshot") == 0)
		wait = true;
	rc = run(c, &p, wait);
	ds_api_params_free(p.v, p.n);
	client_close(c);
	return rc;
}
