#!/usr/bin/env python3
"""Requests that meet a copy still running (API.md "Preconditions", doc/dsnapd.md
"Lifecycle"): a second snapshot of the disk, the concurrency quota, deleting,
resetting from or cloning a progressing snapshot, deleting its disk,
copies waiting their turn (max_running_copies), and SIGTERM in the middle of
copies.

The copies read a 1 GiB image of incompressible data (DSNAP_API_BIG_MIB
changes it), so each lasts a second or more; BigImage.refresh() gives every
chunk new content so that a copy does not find it all in the store."""
import filecmp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import ApiTest  # noqa: E402

big = None


def setUpModule():
    global big
    d = harness.make_tmpdir("dsnap-api-big-")
    t0 = time.monotonic()
    big = harness.BigImage(os.path.join(d, "big.img"))
    harness.log("big image: %d MiB in %.1f s" % (big.mib, time.monotonic() - t0))


def tearDownModule():
    if big:
        harness.remove_tmpdir(os.path.dirname(big.path))


class BusyMixin:

    def start_copy(self, disk, params=None):
        p = {"DiskId": disk}
        p.update(params or {})
        sid = self.assertOk(self.call("CreateSnapshot", p), ["SnapshotId"])["SnapshotId"]
        return sid

    def still_progressing(self, sid):
        s = self.snapshot(sid)
        self.assertEqual(s["Status"], "progressing",
                         "the copy ended before the checks were done; make it longer with "
                         "DSNAP_API_BIG_MIB (now %d)" % big.mib)
        return s


class OneCopyAtATime(BusyMixin, ApiTest):

    def test_requests_during_a_copy(self):
        disk = self.assertOk(self.call("RegisterDisk", {"Path": big.path}))["DiskId"]
        t0 = time.monotonic()
        earlier = self.create_snapshot(disk)
        harness.log("a full copy of %d MiB took %.1f s" % (big.mib, time.monotonic() - t0))
        big.refresh()
        sid = self.start_copy(disk, {"SnapshotName": "busy"})
        s = self.snapshot(sid)
        self.assertEqual(s["Status"], "progressing", s)
        self.assertRegex(s["Progress"], harness.PROGRESS_RE)
        self.assertNotEqual(s["Progress"], "100%", s)

        # A second snapshot of the disk: refused, nothing made, its token unused.
        self.assertError(self.call("CreateSnapshot", {"DiskId": disk}),
                         "IncorrectDiskStatus.CreatingSnapshot")
        self.assertError(self.call("CreateSnapshot", {"DiskId": disk, "ClientToken": "later"}),
                         "IncorrectDiskStatus.CreatingSnapshot")
        self.assertEqual(self.describe({"DiskId": disk})["TotalCount"], 2)
        # The progressing snapshot cannot be released or restored onto its disk.
        self.assertError(self.call("DeleteSnapshot", {"SnapshotId": sid}),
                         "IncorrectSnapshotStatus")
        self.assertError(self.call("ResetDisk", {"DiskId": disk, "SnapshotId": sid}),
                         "IncorrectSnapshotStatus")
        # Nor can the disk be reset from an older one, or forgotten.
        self.assertError(self.call("ResetDisk", {"DiskId": disk, "SnapshotId": earlier}),
                         "IncorrectDiskStatus.CreatingSnapshot")
        a = self.call("DeleteDisk", {"DiskId": disk})
        self.assertIn(a.code, ("IncorrectDiskStatus", "IncorrectDiskStatus.CreatingSnapshot"), a)
        self.assertError(a, a.code)
        listed = self.describe({"DiskId": disk, "Status": "progressing"})
        self.assertEqual([x["SnapshotId"] for x in listed["Snapshots"]["Snapshot"]], [sid])
        self.assertIs(self.still_progressing(sid)["Available"], True)
        # Instant access: a disk made from it while it is copied holds its point in time.
        made = self.assertOk(self.call("CreateDisk", {"SnapshotId": sid}), ["DiskId"])["DiskId"]
        self.assertTrue(filecmp.cmp(self.disk(made)["SourcePath"], big.path, shallow=False))

        # Progress only grows, and ends at 100%.
        last = -1
        while True:
            s = self.snapshot(sid)
            pct = int(s["Progress"].rstrip("%"))
            self.assertGreaterEqual(pct, last, s)
            last = pct
            if s["Status"] != "progressing":
                break
            time.sleep(0.05)
        self.assertEqual((s["Status"], s["Progress"], s["Available"]), ("accomplished", "100%", True))
        # Now all of it is allowed again; the token refused before is free.
        sid2 = self.assertOk(self.call("CreateSnapshot", {"DiskId": disk, "ClientToken": "later"})
                             )["SnapshotId"]
        self.wait_snapshot(sid2)
        self.assertOk(self.call("DeleteSnapshot", {"SnapshotId": sid2}))


class ConcurrentCopiesAndStop(BusyMixin, ApiTest):
    CONFIG = {"max_copies_per_disk": 2}

    def test_quota_then_sigterm(self):
        disk = self.assertOk(self.call("RegisterDisk", {"Path": big.path}))["DiskId"]
        big.refresh()
        before = self.describe({"DiskId": disk})["TotalCount"]
        s1 = self.start_copy(disk)
        s2 = self.start_copy(disk)
        a = self.call("CreateSnapshot", {"DiskId": disk})
        self.assertError(a, "QuotaExceed.ConcurrentSnapshotQuota")
        self.assertEqual(self.describe({"DiskId": disk})["TotalCount"], before + 2)
        self.still_progressing(s1)
        self.still_progressing(s2)

        # SIGTERM: exit 0 promptly; the copies end failed.
        rc, took = self.d.stop()
        harness.log("dsnapd stopped in %.2f s with two copies running" % took)
        self.assertEqual(rc, 0, self.d.log()[-3000:])
        self.assertLess(took, 5.0, "dsnapd took %.1f s to stop" % took)
        self.d.start()
        for sid in (s1, s2):
            s = self.snapshot(sid)
            self.assertEqual(s["Status"], "failed", s)
            self.assertIs(s["Available"], False, s)
            self.assertError(self.call("CreateDisk", {"SnapshotId": sid}), "IncorrectSnapshotStatus")
        # The disk takes snapshots again.
        sid = self.start_copy(disk)
        self.assertEqual(self.wait_snapshot(sid)["Status"], "accomplished")

        # "The number of snapshots being created for the disk %s has exceeded
        # the concurrent quota (%s)": the disk and the configured number.
        with self.subTest(check="the message of QuotaExceed.ConcurrentSnapshotQuota"):
            self.assertEqual(
                a.json["Message"],
                "The number of snapshots being created for the disk %s has exceeded the "
                "concurrent quota (2). Please wait for the previous snapshots to complete "
                "before trying again." % disk)


class CopiesWaitTheirTurn(BusyMixin, ApiTest):
    """max_running_copies: copies beyond it wait, progressing at 0%, and run in
    the order they were asked for; a stop fails the waiting ones too."""
    CONFIG = {"max_running_copies": 1}

    def test_queue_then_sigterm(self):
        disk = self.assertOk(self.call("RegisterDisk", {"Path": big.path}))["DiskId"]
        small = [self.new_disk(size=1 << 20)[0] for _ in range(3)]
        big.refresh()
        first = self.start_copy(disk)
        waiting = [self.start_copy(d) for d in small]
        self.still_progressing(first)
        for sid in waiting:
            s = self.snapshot(sid)
            self.assertEqual((s["Status"], s["Progress"]), ("progressing", "0%"), s)
        for sid in [first] + waiting:
            self.assertEqual(self.wait_snapshot(sid)["Status"], "accomplished")

        big.refresh()
        first = self.start_copy(disk)
        queued = self.start_copy(small[0])
        self.still_progressing(first)
        rc, took = self.d.stop()
        self.assertEqual(rc, 0, self.d.log()[-3000:])
        self.assertLess(took, 5.0, "dsnapd took %.1f s to stop" % took)
        self.d.start()
        for sid in (first, queued):
            self.assertEqual(self.snapshot(sid)["Status"], "failed")
        sid = self.start_copy(small[0])
        self.assertEqual(self.wait_snapshot(sid)["Status"], "accomplished")


if __name__ == "__main__":
    harness.main()
