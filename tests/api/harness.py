"""Shared pieces of the API tests: a dsnapd per test, requests over its
Unix socket, checks of the answer shapes of API.md, disk images.

Every test script imports this module and ends with ``harness.main()``,
which maps unittest's result onto CTest: 0 passed, 1 failed, 77 every test
skipped (SKIP_RETURN_CODE 77). The binaries come from the environment that
tests/api/CMakeLists.txt sets: DSNAPD (the daemon) and DSNAP (the CLI).

A Daemon is stopped with SIGTERM on every exit path of its test (class
cleanups, and an atexit hook for anything left); stop() checks that it
exits 0 and that its log holds no sanitizer report. dsnapd also gets
PR_SET_PDEATHSIG, so a test killed by CTest's timeout does not leave it
running.
"""
import atexit
import ctypes
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

DSNAPD = os.environ.get("DSNAPD", "")
DSNAP = os.environ.get("DSNAP", "")
SKIP = 77

UUID_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")
SNAP_ID_RE = re.compile(r"^s-[a-z0-9]{20}$")
DISK_ID_RE = re.compile(r"^d-[a-z0-9]{20}$")
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
PROGRESS_RE = re.compile(r"^(\d|[1-9]\d|100)%$")
ERROR_KEYS = {"RequestId", "HostId", "Code", "Message"}

# HTTP status and message of every code, as API.md and the reference pages
# (/work/shared/seeds) give them. A message with %s is checked as a pattern.
ERRORS = {
    "MissingParameter": (400, None),
    "InvalidParameter": (400, None),
    "InvalidAction.NotFound": (400, "Specified api is not found, please check your url and method."),
    "InvalidVersion": (400, None),
    "InvalidRegionId.NotFound": (404, None),
    "InvalidDiskId.NotFound": (404, "The specified DiskId does not exist."),
    "InvalidSnapshotId.NotFound": (404, None),
    "InvalidSnapshotName.Malformed": (400, "The specified SnapshotName is wrongly formed."),
    "InvalidDescription.Malformed": (404, "The specified description is wrongly formed."),
    "InvalidRetentionDays.Malformed": (400, "The specified RetentionDays is not valid."),
    "InvalidSnapshotCategory.Malformed": (403, "The specified Category is not valid."),
    "InvalidCategoryAndInstantAccess.Malformed": (
        403, "The snapshot Category and InstantAccess can't be used together."),
    "InvalidInstantAccessRetentionDays.Malformed": (
        403, "The specified InstantAccessRetentionDays is not valid."),
    "InvalidClientToken.Malformed": (
        403, "The specified clientToken is improperly formatted. It must contain only ASCII "
             "characters and must not exceed 64 characters in length."),
    "InvalidTagKey.Malformed": (400, "The specified Tag.n.Key is not valid."),
    "InvalidTagValue.Malformed": (400, "The specified Tag.n.Value is not valid."),
    "Duplicate.TagKey": (400, "The Tag.N.Key contain duplicate key."),
    "QuotaExceed.Tags": (403, None),
    "InvalidResourceGroup.NotFound": (404, "The ResourceGroup provided does not exist in our records."),
    "InvalidStorageLocationArn.Malformed": (
        403, "The specified parameter StorageLocationArn is wrongly formed."),
    "IncorrectDiskStatus.CreatingSnapshot": (403, "A previous snapshot creation is in process."),
    "QuotaExceed.ConcurrentSnapshotQuota": (403, None),
    "QuotaExceed.Snapshot": (403, "The snapshot quota exceeds."),
    "IncorrectDiskStatus": (403, "The current disk status does not support this operation."),
    "DiskCategory.OperationNotSupported": (400, None),
    "InstanceLockedForSecurity": (403, "The disk attached instance is locked due to security."),
    "InvalidAction.Unauthorized": (403, "The specified action is not valid."),
    "Throttling": (403, "Request was denied due to user flow control."),
    "IdempotentParameterMismatch": (403, "The specified clientToken is used."),
    "IdempotentProcessing": (403, "The previous idempotent request(s) is still processing."),
    "IncorrectSnapshotStatus": (403, None),
    "InvalidSnapshotIds.Malformed": (400, None),
    "InvalidDiskIds.Malformed": (400, None),
    "InvalidStatus.ValueNotSupported": (400, None),
    "InvalidSnapshotType.ValueNotSupported": (400, None),
    "InvalidNextToken.Malformed": (400, None),
    "InvalidMaxResults.Malformed": (400, None),
    "InvalidDiskName.Malformed": (400, None),
    "InvalidDiskSize.ValueNotSupported": (400, None),
    "InvalidPath.NotFound": (404, None),
    "InvalidPath.Malformed": (400, None),
    "InvalidResourceGroupName.Malformed": (400, None),
    "InternalError": (500, None),
}

# Every RequestId seen by this process: each answer must bring a new one.
_seen_request_ids = set()
_seen_lock = threading.Lock()


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---- HTTP over the Unix socket ------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over an AF_UNIX stream socket."""

    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Answer:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self.json = None

    @property
    def code(self):
        return self.json.get("Code") if isinstance(self.json, dict) else None

    def get(self, key, default=None):
        return self.json.get(key, default) if isinstance(self.json, dict) else default

    def __repr__(self):
        return "<HTTP %d %s>" % (self.status, self.body[:600].decode("utf-8", "replace"))


def quote(v):
    if isinstance(v, bytes):
        return urllib.parse.quote_from_bytes(v, safe="")
    return urllib.parse.quote(str(v), safe="")


def encode(params):
    """Form-encodes params: a dict or a list of (key, value) pairs, so a key
    may repeat; values are str, int or bytes."""
    items = params.items() if isinstance(params, dict) else params
    return "&".join("%s=%s" % (quote(k), quote(v)) for k, v in items)


def request(sock, params=None, method="GET", query=None, body=None, headers=None, path="/",
            timeout=60):
    """One request on a fresh connection. params go in the query string
    (GET) or the body (POST) unless query/body give the raw text."""
    hdrs = dict(headers or {})
    if query is None and params is not None and method != "POST":
        query = encode(params)
    if body is None and params is not None and method == "POST":
        body = encode(params).encode()
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
    url = path + ("?" + query if query else "")
    conn = UnixHTTPConnection(sock, timeout=timeout)
    try:
        conn.request(method, url, body=body, headers=hdrs)
        r = conn.getresponse()
        return Answer(r.status, dict(r.getheaders()), r.read())
    finally:
        conn.close()


def raw_exchange(sock, data, timeout=10):
    """Sends raw bytes and reads until the daemon closes or stops talking.
    Returns the bytes received (b"" when it just closed)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock)
    out = b""
    try:
        s.sendall(data)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        while True:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
    finally:
        s.close()
    return out


def call_as(uid, gid, sock, params, groups=()):
    """The request sent by a child process running as uid/gid (root only)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            a = request(sock, params)
            data = json.dumps([a.status, a.body.decode("utf-8", "replace"), a.headers])
        except BaseException as e:  # reported to the parent, never raised here
            data = json.dumps([-1, repr(e), {}])
        os.write(wfd, data.encode())
        os._exit(0)
    os.close(wfd)
    data = b""
    while True:
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    status, body, headers = json.loads(data.decode())
    if status < 0:
        raise RuntimeError("request as uid %d failed: %s" % (uid, body))
    return Answer(status, headers, body.encode())


# ---- the daemon ---------------------------------------------------------------------

_live_daemons = []
_tmp_dirs = []


def _pdeathsig():
    # PR_SET_PDEATHSIG = 1: dsnapd gets SIGTERM when this test process dies.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


def make_tmpdir(prefix="dsnap-api-"):
    d = tempfile.mkdtemp(prefix=prefix)
    _tmp_dirs.append(d)
    return d


def remove_tmpdir(d):
    shutil.rmtree(d, ignore_errors=True)
    if d in _tmp_dirs:
        _tmp_dirs.remove(d)


SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread|Memory|UndefinedBehavior)Sanitizer|"
                          r"runtime error:|SUMMARY: \w+Sanitizer")


class Daemon:
    """One dsnapd with its socket, state and config in dir."""

    def __init__(self, dir, config=None, name="d"):
        self.dir = dir
        self.name = name
        self.sock = os.path.join(dir, name + ".sock")
        self.state = os.path.join(dir, name + "-state")
        self.conf = os.path.join(dir, name + ".conf")
        self.logfile = os.path.join(dir, name + ".log")
        self.config = dict(config or {})
        self.proc = None
        self.log_offset = 0

    def write_config(self):
        with open(self.conf, "w") as f:
            f.write("# written by tests/api/harness.py\n")
            for k, v in self.config.items():
                f.write("%s = %s\n" % (k, v))

    def start(self, timeout=20):
        self.write_config()
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        logf = open(self.logfile, "ab")
        self.log_offset = logf.tell()
        self.proc = subprocess.Popen(
            [DSNAPD, "--socket", self.sock, "--state", self.state, "--config", self.conf],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
            preexec_fn=_pdeathsig)
        logf.close()
        _live_daemons.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("dsnapd exited %s at start:\n%s" %
                                     (self.proc.returncode, self.log()))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.sock)
                return self
            except OSError:
                time.sleep(0.02)
            finally:
                s.close()
        self.kill()
        raise AssertionError("dsnapd did not answer on %s within %ds" % (self.sock, timeout))

    def log(self):
        try:
            with open(self.logfile, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def sanitizer_report(self):
        m = SANITIZER_RE.search(self.log())
        return self.log() if m else None

    def stop(self, timeout=30):
        """SIGTERM; returns (exit code, seconds it took). Raises when the
        daemon does not exit in time or its log has a sanitizer report."""
        if not self.proc:
            return 0, 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("dsnapd did not stop within %ds of SIGTERM" % timeout)
        took = time.monotonic() - t0
        self.proc = None
        if self in _live_daemons:
            _live_daemons.remove(self)
        rep = self.sanitizer_report()
        if rep:
            raise AssertionError("dsnapd's log holds a sanitizer report:\n" + rep[-6000:])
        return rc, took

    def stop_checked(self, test=None):
        rc, _ = self.stop()
        if rc != 0:
            raise AssertionError("dsnapd exited %d after SIGTERM, not 0:\n%s" % (rc, self.log()[-4000:]))

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self in _live_daemons:
            _live_daemons.remove(self)

    # -- requests --

    def req(self, params=None, **kw):
        return request(self.sock, params, **kw)

    def call(self, action, params=None, **kw):
        """Action with params (dict or pairs); kw go to request()."""
        items = [("Action", action)]
        if params:
            items += list(params.items() if isinstance(params, dict) else params)
        return request(self.sock, items, **kw)


@atexit.register
def _cleanup():
    for d in list(_live_daemons):
        try:
            d.stop()
        except Exception:
            d.kill()
    for t in list(_tmp_dirs):
        shutil.rmtree(t, ignore_errors=True)


# ---- images --------------------------------------------------------------------------

def write_random(path, size, seed=None):
    rnd = random.Random(seed) if seed is not None else None
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 << 20)
            f.write(rnd.randbytes(n) if rnd else os.urandom(n))
            left -= n
    return path


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


class BigImage:
    """An image of incompressible data big enough that a snapshot takes a
    while (1 GiB by default, DSNAP_API_BIG_MIB to change). refresh() gives
    every 64 KiB chunk new content, so the next copy stores all of it
    again instead of finding it in the store."""

    CHUNK = 65536

    def __init__(self, path, mib=None):
        self.path = path
        self.mib = mib or int(os.environ.get("DSNAP_API_BIG_MIB", "1024"))
        self.size = self.mib << 20
        self.gen = 0
        block = random.Random(7).randbytes(min(64, self.mib) << 20)
        with open(path, "wb") as f:
            left = self.size
            while left > 0:
                f.write(block[:left])
                left -= len(block)
        self.refresh()

    def refresh(self):
        self.gen += 1
        fd = os.open(self.path, os.O_WRONLY)
        try:
            stamp = self.gen.to_bytes(8, "little")
            for i in range(self.size // self.CHUNK):
                os.pwrite(fd, stamp + i.to_bytes(8, "little"), i * self.CHUNK)
        finally:
            os.close(fd)


# ---- the checks ------------------------------------------------------------------------

class ApiTest(unittest.TestCase):
    """A TestCase with one daemon for the class (config from CONFIG), in a
    fresh temp dir; checks of API.md's answer shapes."""

    CONFIG = {}
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        if not DSNAPD or not os.access(DSNAPD, os.X_OK):
            raise AssertionError("set DSNAPD to the dsnapd binary (tests/api/CMakeLists.txt does)")
        cls.tmp = make_tmpdir()
        cls.addClassCleanup(remove_tmpdir, cls.tmp)
        cls.d = Daemon(cls.tmp, cls.CONFIG)
        cls.d.start()
        cls.addClassCleanup(cls.d.stop_checked)
        cls.disk_counter = 0

    # -- requests --

    @classmethod
    def call(cls, action, params=None, **kw):
        return cls.d.call(action, params, **kw)

    # -- answer checks --

    def check_request_id(self, a):
        rid = a.get("RequestId")
        self.assertIsInstance(rid, str, a)
        self.assertRegex(rid, UUID_RE, a)
        uuid.UUID(rid)
        with _seen_lock:
            self.assertNotIn(rid.lower(), _seen_request_ids, "RequestId repeated: %r" % a)
            _seen_request_ids.add(rid.lower())

    def assertOk(self, a, keys=None, msg=None):
        self.assertIsNotNone(a.json, a)
        self.assertEqual(a.status, 200, msg or a)
        self.check_request_id(a)
        self.assertTrue(a.headers.get("Content-Type", "").startswith("application/json"), a.headers)
        if keys is not None:
            self.assertEqual(set(a.json), set(keys) | {"RequestId"}, a)
        return a.json

    def assertError(self, a, code, status=None, msg=None):
        """An error answer: the code, its HTTP status from the table, the
        body {"RequestId","HostId","Code","Message"} and nothing else."""
        self.assertIsNotNone(a.json, a)
        self.assertEqual(a.code, code, msg or a)
        want_status, want_msg = ERRORS.get(code, (None, None))
        self.assertEqual(a.status, status or want_status, msg or a)
        self.assertEqual(set(a.json), ERROR_KEYS, a)
        self.check_request_id(a)
        self.assertIsInstance(a.json["HostId"], str)
        self.assertTrue(a.json["HostId"], a)
        self.assertIsInstance(a.json["Message"], str)
        self.assertTrue(a.json["Message"], a)
        if want_msg:
            self.assertEqual(a.json["Message"], want_msg, a)
        return a.json

    # -- disks and snapshots --

    def new_disk(self, size=65536, seed=None, data=None):
        """Registers a fresh image file of random bytes; returns (id, path)."""
        type(self).disk_counter += 1
        path = os.path.join(self.tmp, "disk%d.img" % type(self).disk_counter)
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        else:
            write_random(path, size, seed)
        j = self.assertOk(self.call("RegisterDisk", {"Path": path}), ["DiskId"])
        self.assertRegex(j["DiskId"], DISK_ID_RE)
        # The answer is this file's disk (not one it was mistaken for).
        self.assertEqual(self.disk(j["DiskId"])["SourcePath"], os.path.realpath(path))
        return j["DiskId"], path

    def create_snapshot(self, disk_id, params=None, wait=True):
        p = {"DiskId": disk_id}
        p.update(params or {})
        j = self.assertOk(self.call("CreateSnapshot", p), ["SnapshotId"])
        self.assertRegex(j["SnapshotId"], SNAP_ID_RE)
        if wait:
            s = self.wait_snapshot(j["SnapshotId"])
            self.assertEqual(s["Status"], "accomplished", s)
        return j["SnapshotId"]

    def describe(self, params=None):
        return self.assertOk(self.call("DescribeSnapshots", params))

    def snapshot(self, sid):
        """The DescribeSnapshots entry of sid, or None when it is gone."""
        j = self.describe({"SnapshotIds": json.dumps([sid])})
        lst = j["Snapshots"]["Snapshot"]
        self.assertLessEqual(len(lst), 1)
        return lst[0] if lst else None

    def wait_snapshot(self, sid, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            s = self.snapshot(sid)
            self.assertIsNotNone(s, "snapshot %s vanished" % sid)
            if s["Status"] != "progressing":
                return s
            if time.monotonic() > deadline:
                self.fail("snapshot %s still progressing after %ds" % (sid, timeout))
            time.sleep(0.02)

    def disk(self, disk_id):
        j = self.assertOk(self.call("DescribeDisks", {"DiskIds": json.dumps([disk_id])}))
        lst = j["Disks"]["Disk"]
        return lst[0] if lst else None


def main():
    """Runs the module's tests; exits 0, 1, or 77 when all were skipped."""
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    r = prog.result
    if not r.wasSuccessful():
        sys.exit(1)
    # A class whose setUpClass skipped adds one entry that is not a test.
    test_skips = [t for t, _ in r.skipped if isinstance(t, unittest.TestCase)]
    if r.skipped and r.testsRun - len(test_skips) <= 0:
        sys.exit(SKIP)
    sys.exit(0)
