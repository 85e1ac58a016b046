#!/usr/bin/env python3
"""Retention (API.md "Retention", doc/dsnapd.md "Lifecycle"): with a clock
the test moves forward (clock_file) and a maintenance pass every second, a
snapshot whose RetentionDays have passed is released by the daemon and
its chunks are collected, unless another snapshot still uses them; the
others stay."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import ApiTest  # noqa: E402

MIB = 1 << 20


class Retention(ApiTest):

    @classmethod
    def setUpClass(cls):
        cls.clock_dir = harness.make_tmpdir("dsnap-api-clock-")
        cls.clock = os.path.join(cls.clock_dir, "clock")
        cls.set_clock(0)
        cls.CONFIG = {"clock_file": cls.clock, "maintenance_interval": 1}
        super().setUpClass()
        cls.addClassCleanup(harness.remove_tmpdir, cls.clock_dir)

    @classmethod
    def set_clock(cls, seconds):
        tmp = cls.clock + ".new"
        with open(tmp, "w") as f:
            f.write("%d\n" % seconds)
        os.replace(tmp, cls.clock)

    def usage(self):
        return self.assertOk(self.call("DescribeSnapshotsUsage"), ["SnapshotCount", "SnapshotSize"])

    def test_expiry(self):
        # Three disks of 4 MiB of their own random bytes.
        short, _ = self.new_disk(size=4 * MIB)   # RetentionDays=1: released at +90000 s
        shared, _ = self.new_disk(size=4 * MIB)  # one expiring and one kept snapshot
        kept, _ = self.new_disk(size=4 * MIB)    # no RetentionDays, and RetentionDays=2
        gone = self.create_snapshot(short, {"RetentionDays": "1"})
        shared_gone = self.create_snapshot(shared, {"RetentionDays": "1"})
        shared_kept = self.create_snapshot(shared)
        forever = self.create_snapshot(kept)
        two_days = self.create_snapshot(kept, {"RetentionDays": "2"})
        modified = self.create_snapshot(kept, {"RetentionDays": "3"})
        self.assertOk(self.call("ModifySnapshotAttribute", {"SnapshotId": modified,
                                                            "RetentionDays": "1"}))
        time.sleep(2.5)  # passes at the real time release nothing
        for sid in (gone, shared_gone, shared_kept, forever, two_days, modified):
            self.assertIsNotNone(self.snapshot(sid), sid)
        u0 = self.usage()
        self.assertEqual(u0["SnapshotCount"], 6)

        self.set_clock(90000)  # 25 hours later
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            left = self.describe({"MaxResults": 100})["TotalCount"]
            if left == 3:
                break
            time.sleep(0.2)
        for sid in (gone, shared_gone, modified):
            self.assertIsNone(self.snapshot(sid), "snapshot %s outlived its retention" % sid)
        for sid in (shared_kept, forever, two_days):
            self.assertEqual(self.snapshot(sid)["Status"], "accomplished", sid)

        # The released chunks are collected: the 4 MiB only `gone` held
        # (the other two released snapshots share theirs with kept ones).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            u1 = self.usage()
            if u0["SnapshotSize"] - u1["SnapshotSize"] >= 4 * MIB:
                break
            time.sleep(0.2)
        harness.log("stored bytes: %d before, %d after the expiry" %
                    (u0["SnapshotSize"], u1["SnapshotSize"]))
        self.assertEqual(u1["SnapshotCount"], 3)
        self.assertGreaterEqual(u0["SnapshotSize"] - u1["SnapshotSize"], 4 * MIB)
        self.assertLess(u0["SnapshotSize"] - u1["SnapshotSize"], 6 * MIB,
                        "chunks still used by a kept snapshot were collected")
        self.assertIn("expired", self.d.log())

        # What stays is whole: every chunk of the kept snapshots is there.
        for sid in (shared_kept, forever, two_days):
            j = self.assertOk(self.call("VerifySnapshot", {"SnapshotId": sid}))
            self.assertEqual(j["BadChunks"], 0, sid)

        # Two days: released once the clock passes them too.
        self.set_clock(2 * 86400 + 600)
        deadline = time.monotonic() + 15
        while self.snapshot(two_days) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertIsNone(self.snapshot(two_days))
        self.assertIsNotNone(self.snapshot(forever))
        self.assertIsNotNone(self.snapshot(shared_kept))


if __name__ == "__main__":
    harness.main()
