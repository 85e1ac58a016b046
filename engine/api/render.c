/*
 * Answers: the error table of API.md, request ids, JSON and XML bodies.
 *
 * XML follows the cloud API's form: the JSON object's members become
 * elements under <ActionResponse> (errors under <Error>); an array is its
 * element repeated, so {"Snapshots": {"Snapshot": [a, b]}} renders as
 * <Snapshots><Snapshot>a</Snapshot><Snapshot>b</Snapshot></Snapshots>.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "api/api_priv.h"
#include "util/util.h"

struct api_err {
	const char *code;
	int status;
	const char *message; /* may hold %s, filled by api_error's arguments */
};

/* Codes and messages as the reference pages spell them (seeds/); the
 * local ones (paths, disk registration) follow the same style. */
static const struct api_err errors[] = {
	{"MissingParameter", 400,
	 "The input parameter \"%s\" that is mandatory for processing this request is not supplied."},
	{"InvalidParameter", 400, "The specified parameter \"%s\" is not valid."},
	{"InvalidAction.NotFound", 400,
	 "Specified api is not found, please check your url and method."},
	{"InvalidVersion", 400, "Specified parameter Version is not valid."},
	{"InvalidRegionId.NotFound", 404, "The specified RegionId does not exist."},
	{"InvalidDiskId.NotFound", 404, "The specified DiskId does not exist."},
	{"InvalidSnapshotId.NotFound", 404, "The specified SnapshotId does not exist."},
	{"InvalidSnapshotName.Malformed", 400, "The specified SnapshotName is wrongly formed."},
	{"InvalidDescription.Malformed", 404, "The specified description is wrongly formed."},
	{"InvalidRetentionDays.Malformed", 400, "The specified RetentionDays is not valid."},
	{"InvalidSnapshotCategory.Malformed", 403, "The specified Category is not valid."},
	{"InvalidCategoryAndInstantAccess.Malformed", 403,
	 "The snapshot Category and InstantAccess can't be used together."},
	{"InvalidInstantAccessRetentionDays.Malformed", 403,
	 "The specified InstantAccessRetentionDays is not valid."},
	{"InvalidClientToken.Malformed", 403,
	 "The specified clientToken is improperly formatted. It must contain only ASCII "
	 "characters and must not exceed 64 characters in length."},
	{"InvalidTagKey.Malformed", 400, "The specified Tag.n.Key is not valid."},
	{"InvalidTagValue.Malformed", 400, "The specified Tag.n.Value is not valid."},
	{"Duplicate.TagKey", 400, "The Tag.N.Key contain duplicate key."},
	{"QuotaExceed.Tags", 403, "%s"},
	{"InvalidResourceGroup.NotFound", 404,
	 "The ResourceGroup provided does not exist in our records."},
	{"InvalidStorageLocationArn.Malformed", 403,
	 "The specified parameter StorageLocationArn is wrongly formed."},
	{"IncorrectDiskStatus.CreatingSnapshot", 403, "A previous snapshot creation is in process."},
	{"QuotaExceed.ConcurrentSnapshotQuota", 403,
	 "The number of snapshots being created for the disk %s has exceeded the concurrent "
	 "quota (%s). Please wait for the previous snapshots to complete before trying again."},
	{"QuotaExceed.Snapshot", 403, "The snapshot quota exceeds."},
	{"IncorrectDiskStatus", 403, "The current disk status does not support this operation."},
	{"DiskCategory.OperationNotSupported", 400,
	 "The type of the specified disk does not support creating a snapshot."},
	{"InstanceLockedForSecurity", 403, "The disk attached instance is locked due to security."},
	{"InvalidAction.Unauthorized", 403, "The specified action is not valid."},
	{"Throttling", 403, "Request was denied due to user flow control."},
	{"IdempotentParameterMismatch", 403, "The specified clientToken is used."},
	{"IdempotentProcessing", 403, "The previous idempotent request(s) is still processing."},
	{"IncorrectSnapshotStatus", 403,
	 "The current status of the snapshot does not support this operation."},
	{"InvalidSnapshotIds.Malformed", 400, "The specified parameter SnapshotIds is not valid."},
	{"InvalidDiskIds.Malformed", 400, "The specified parameter DiskIds is not valid."},
	{"InvalidStatus.ValueNotSupported", 400, "The specified Status is not supported."},
	{"InvalidSnapshotType.ValueNotSupported", 400, "The specified SnapshotType is not supported."},
	{"InvalidNextToken.Malformed", 400, "The specified NextToken is not valid."},
	{"InvalidMaxResults.Malformed", 400, "The specified MaxResults is not valid."},
	{"InvalidDiskName.Malformed", 400, "The specified DiskName is wrongly formed."},
	{"InvalidDiskSize.ValueNotSupported", 400,
	 "The specified Size is not valid: an integer number of GiB from 1 to 65536."},
	{"InvalidDiskSize.TooSmall", 403, "The disk is smaller than the snapshot."},
	{"InvalidPath.NotFound", 404, "The specified Path does not exist."},
	{"InvalidPath.Malformed", 400, "The specified Path must be an absolute path."},
	{"InvalidResourceGroupName.Malformed", 400, "The specified Name is not valid."},
	{"ResourceGroup.NotEmpty", 403, "The resource group still holds snapshots."},
	{"StorageFull", 507, "The snapshot store has no space left."},
	{"OperationDenied.NeedRoot", 403, "dsnapd must run as root to attach disks."},
	{"IncorrectDiskStatus.NotAttached", 403, "The specified disk is not attached."},
	{"IncorrectDiskStatus.InUse", 403,
	 "The disk's device is mounted or open; unmount it before detaching."},
	{"IncorrectSnapshotStatus.NotAttached", 403, "The specified snapshot is not attached."},
	{"IncorrectSnapshotStatus.Attached", 403, "The specified snapshot is attached already."},
	{"IncorrectSnapshotStatus.InUse", 403,
	 "The snapshot's device is mounted or open; unmount it before detaching."},
	{"InternalError", 500, "The request processing has failed due to some unknown error."},
};

int api_error(struct req *q, const char *code, ...)
{
	const struct api_err *e = NULL;
	va_list ap;

	for (size_t i = 0; i < ARRAY_SIZE(errors) && !e; i++)
		if (strcmp(errors[i].code, code) == 0)
			e = &errors[i];
	if (!e)
		e = &errors[ARRAY_SIZE(errors) - 1];
	q->code = e->code;
	q->status = e->status;
	va_start(ap, code);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
	vsnprintf(q->message, sizeof(q->message), e->message, ap);
#pragma GCC diagnostic pop
	va_end(ap);
	return -1;
}

void new_request_id(char out[40])
{
	uint8_t b[16];

	if (random_bytes(b, sizeof(b)) < 0)
		memset(b, 0, sizeof(b)); /* never fails for 16 bytes once the pool is up */
	b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
	b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* variant 10 */
	snprintf(out, 40, "%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-%02X%02X%02X%02X%02X%02X",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
		 b[13], b[14], b[15]);
}

void format_iso8601(int64_t t, char out[32])
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- XML ------------------------------------------------------------------- */

struct buf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = MAX(b->cap * 2, b->len + n + 256);
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void buf_escaped(struct buf *b, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '&': buf_str(b, "&amp;"); break;
		case '<': buf_str(b, "&lt;"); break;
		case '>': buf_str(b, "&gt;"); break;
		case '"': buf_str(b, "&quot;"); break;
		case '\'': buf_str(b, "&apos;"); break;
		default: buf_add(b, s, 1); break;
		}
	}
}

static void xml_value(struct buf *b, const char *name, json_object *v);

static void xml_element(struct buf *b, const char *name, json_object *v)
{
	buf_str(b, "<");
	buf_str(b, name);
	buf_str(b, ">");
	if (json_object_is_type(v, json_type_object)) {
		json_object_object_foreach(v, k, child) xml_value(b, k, child);
	} else if (v) {
		buf_escaped(b, json_object_get_string(v));
	}
	buf_str(b, "</");
	buf_str(b, name);
	buf_str(b, ">");
}

static void xml_value(struct buf *b, const char *name, json_object *v)
{
	if (json_object_is_type(v, json_type_array)) {
		for (size_t i = 0; i < json_object_array_length(v); i++)
			xml_element(b, name, json_object_array_get_idx(v, i));
	} else {
		xml_element(b, name, v);
	}
}

/* ---- answers ------------------------------------------------------------------- */

static const char oom_body[] =
	"{\"Code\":\"InternalError\",\"Message\":\"The request processing has failed due to "
	"some unknown error.\"}";

static void finish(struct ds_api_response *resp, json_object *root, const char *xml_root,
		   bool xml)
{
	const char *text = NULL;

	if (!root)
		goto oom;
	if (xml) {
		struct buf b = {0};
		buf_str(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
		xml_element(&b, xml_root, root);
		if (b.oom) {
			free(b.p);
			json_object_put(root);
			goto oom;
		}
		resp->body = b.p;
		resp->len = b.len;
		resp->content_type = "application/xml;charset=utf-8";
		json_object_put(root);
		return;
	}
	text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
							    JSON_C_TO_STRING_NOSLASHESCAPE);
	resp->body = text ? strdup(text) : NULL;
	json_object_put(root);
	if (!resp->body)
		goto oom;
	resp->len = strlen(resp->body);
	resp->content_type = "application/json;charset=utf-8";
	return;
oom:
	resp->status = 500;
	resp->body = strdup(oom_body);
	resp->len = resp->body ? strlen(resp->body) : 0;
	resp->content_type = "application/json;charset=utf-8";
}

void render_success(const struct req *q, struct ds_api_response *resp, bool xml)
{
	json_object *root = json_object_new_object();
	char name[96];

	if (root) {
		json_object_object_add(root, "RequestId", json_object_new_string(q->request_id));
		if (q->out) {
			json_object_object_foreach(q->out, k, v)
				json_object_object_add(root, k, json_object_get(v));
		}
	}
	snprintf(name, sizeof(name), "%sResponse", q->action ? q->action : "");
	resp->status = 200;
	finish(resp, root, name, xml);
}

void render_error(const struct req *q, struct ds_api_response *resp, bool xml)
{
	json_object *root = json_object_new_object();

	if (root) {
		json_object_object_add(root, "RequestId", json_object_new_string(q->request_id));
		json_object_object_add(root, "HostId", json_object_new_string(q->a->host_id));
		json_object_object_add(root, "Code", json_object_new_string(q->code));
		json_object_object_add(root, "Message", json_object_new_string(q->message));
	}
	resp->status = q->status;
	finish(resp, root, "Error", xml);
}
