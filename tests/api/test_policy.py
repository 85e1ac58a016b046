#!/usr/bin/env python3
"""Authorization (API.md "RAM authorization", doc/policy.md): callers are the
socket peer's uid/gid; anyone but root needs a rule. Requests run as user
nobody (uid 65534) and as a uid with no rule (65533) from forked children.
Needs root (to change uid); skipped otherwise."""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import ApiTest  # noqa: E402

NOBODY = 65534
STRANGER = 65533  # no rule names this uid


class Policy(ApiTest):

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to run requests as other users")
        cls.policy_dir = harness.make_tmpdir("dsnap-api-policy-")
        cls.policy = os.path.join(cls.policy_dir, "policy")
        cls.write_policy("# no rules yet: root only\n")
        cls.CONFIG = {"socket_mode": "0666", "policy": cls.policy}
        super().setUpClass()
        os.chmod(cls.tmp, 0o755)  # the socket's folder, for the other users
        cls.addClassCleanup(harness.remove_tmpdir, cls.policy_dir)

    @classmethod
    def write_policy(cls, text):
        # A new file renamed over the old: never read half written, and a
        # modification time of its own (the daemon reloads on a change).
        time.sleep(0.05)
        tmp = cls.policy + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, cls.policy)

    def as_user(self, uid, action, params=None):
        p = {"Action": action}
        p.update(params or {})
        return harness.call_as(uid, uid, self.d.sock, p)

    def ids(self, j):
        return sorted(s["SnapshotId"] for s in j["Snapshots"]["Snapshot"])

    def test_rules(self):
        a, _ = self.new_disk()
        b, _ = self.new_disk()
        for d in (a, b):
            os.chmod(self.disk_path(d), 0o644)
        sa = self.create_snapshot(a)
        sb = self.create_snapshot(b)
        # No rules: root only.
        self.assertError(self.as_user(NOBODY, "DescribeSnapshots", {"DiskId": a}),
                         "InvalidAction.Unauthorized")
        self.assertError(self.as_user(NOBODY, "CreateSnapshot", {"DiskId": a}),
                         "InvalidAction.Unauthorized")

        self.write_policy("# WHO ACTIONS DISKS\n"
                          "user:nobody  CreateSnapshot,DescribeSnapshots  %s\n" % a)
        # Allowed on A.
        mine = self.assertOk(self.as_user(NOBODY, "CreateSnapshot",
                                          {"DiskId": a, "ClientToken": "tok"}),
                             ["SnapshotId"])["SnapshotId"]
        self.wait_snapshot(mine)
        # Not on B: refused, and nothing changes (the token stays unused too).
        before = self.describe({"DiskId": b})["TotalCount"]
        self.assertError(self.as_user(NOBODY, "CreateSnapshot",
                                      {"DiskId": b, "ClientToken": "tok-b"}),
                         "InvalidAction.Unauthorized")
        self.assertEqual(self.describe({"DiskId": b})["TotalCount"], before)
        self.assertOk(self.as_user(NOBODY, "CreateSnapshot", {"DiskId": a,
                                                              "ClientToken": "tok-b"}))
        self.wait_snapshot(self.describe({"DiskId": a, "MaxResults": 100})
                           ["Snapshots"]["Snapshot"][-1]["SnapshotId"])
        # An unknown disk is no way around it either.
        self.assertError(self.as_user(NOBODY, "CreateSnapshot", {"DiskId": "d-nothere000000000000"}),
                         "InvalidAction.Unauthorized")
        # The list shows A's snapshots only; a filter on B is refused.
        j = self.assertOk(self.as_user(NOBODY, "DescribeSnapshots", {"MaxResults": 100}))
        want = self.ids(self.describe({"DiskId": a, "MaxResults": 100}))
        self.assertEqual(self.ids(j), want)
        self.assertEqual(j["TotalCount"], len(want))
        self.assertNotIn(sb, self.ids(j))
        j = self.assertOk(self.as_user(NOBODY, "DescribeSnapshots",
                                       {"SnapshotIds": json.dumps([sa, sb])}))
        self.assertEqual(self.ids(j), [sa])
        self.assertError(self.as_user(NOBODY, "DescribeSnapshots", {"DiskId": b}),
                         "InvalidAction.Unauthorized")
        # Actions the rule does not name.
        n_disks = self.assertOk(self.call("DescribeDisks", {"MaxResults": 100}))["TotalCount"]
        path = harness.write_random(os.path.join(self.tmp, "by-nobody.img"), 65536)
        for action, params in [("RegisterDisk", {"Path": path}),
                               ("CreateDisk", {"Size": "1"}),
                               ("CreateDisk", {"SnapshotId": sa}),
                               ("DeleteSnapshot", {"SnapshotId": sa}),
                               ("DeleteSnapshot", {"SnapshotId": sb}),
                               ("ModifySnapshotAttribute", {"SnapshotId": sa,
                                                            "SnapshotName": "mine"}),
                               ("ResetDisk", {"DiskId": a, "SnapshotId": sa}),
                               ("DeleteDisk", {"DiskId": a}),
                               ("DescribeSnapshotsUsage", {}),
                               ("CreateResourceGroup", {"Name": "x"}),
                               ("CollectGarbage", {})]:
            with self.subTest(action=action, params=params):
                self.assertError(self.as_user(NOBODY, action, params),
                                 "InvalidAction.Unauthorized")
        self.assertEqual(self.assertOk(self.call("DescribeDisks", {"MaxResults": 100}))
                         ["TotalCount"], n_disks)
        self.assertIsNotNone(self.snapshot(sa))
        self.assertIsNotNone(self.snapshot(sb))
        self.assertEqual(self.snapshot(sa)["SnapshotName"], "")
        # DescribeDisks is not granted: an empty list.
        j = self.assertOk(self.as_user(NOBODY, "DescribeDisks"))
        self.assertEqual(j["Disks"]["Disk"], [])

        # A uid no rule names.
        self.assertError(self.as_user(STRANGER, "CreateSnapshot", {"DiskId": a}),
                         "InvalidAction.Unauthorized")
        self.assertError(self.as_user(STRANGER, "DescribeSnapshots", {"DiskId": a}),
                         "InvalidAction.Unauthorized")
        j = self.assertOk(self.as_user(STRANGER, "DescribeSnapshots"))
        self.assertEqual((j["TotalCount"], j["Snapshots"]["Snapshot"]), (0, []))

        # An edit while running takes effect.
        self.write_policy("user:nobody  CreateSnapshot,DescribeSnapshots  %s\n"
                          "uid:%d       DescribeSnapshots,DescribeDisks  *\n" % (a, STRANGER))
        j = self.assertOk(self.as_user(STRANGER, "DescribeSnapshots", {"DiskId": b}))
        self.assertEqual(self.ids(j), [sb])
        self.assertIn(b, [d["DiskId"] for d in
                          self.assertOk(self.as_user(STRANGER, "DescribeDisks"))["Disks"]["Disk"]])
        self.assertError(self.as_user(STRANGER, "CreateSnapshot", {"DiskId": a}),
                         "InvalidAction.Unauthorized")

        # A broken edit keeps the rules before it, even when it would widen them.
        self.write_policy("*  *  *\nthis line is not a rule\n")
        time.sleep(0.05)
        self.assertError(self.as_user(STRANGER, "CreateSnapshot", {"DiskId": a}),
                         "InvalidAction.Unauthorized")
        self.assertError(self.as_user(NOBODY, "CreateSnapshot", {"DiskId": b}),
                         "InvalidAction.Unauthorized")
        self.assertOk(self.as_user(STRANGER, "DescribeSnapshots", {"DiskId": b}))
        self.assertEqual(self.describe({"DiskId": b})["TotalCount"], before)
        self.assertIn("does not load", self.d.log())
        self.write_policy("user:nosuchuser-dsnap-test  *  *\n")
        self.assertOk(self.as_user(STRANGER, "DescribeSnapshots", {"DiskId": b}))
        self.assertError(self.as_user(STRANGER, "CreateSnapshot", {"DiskId": a}),
                         "InvalidAction.Unauthorized")

        # A good file after the broken ones loads again.
        self.write_policy("user:nobody  DescribeSnapshots  %s\n" % b)
        self.assertError(self.as_user(STRANGER, "DescribeSnapshots", {"DiskId": b}),
                         "InvalidAction.Unauthorized")
        self.assertError(self.as_user(NOBODY, "CreateSnapshot", {"DiskId": a}),
                         "InvalidAction.Unauthorized")
        self.assertEqual(self.ids(self.assertOk(self.as_user(NOBODY, "DescribeSnapshots"))),
                         self.ids(self.describe({"DiskId": b, "MaxResults": 100})))

    def test_group_rule(self):
        disk, _ = self.new_disk()
        sid = self.create_snapshot(disk)
        # nobody's primary group is nogroup (65534) on Debian.
        self.write_policy("gid:%d  DescribeSnapshots  %s\n" % (NOBODY, disk))
        j = self.assertOk(self.as_user(NOBODY, "DescribeSnapshots", {"DiskId": disk}))
        self.assertEqual(self.ids(j), [sid])
        self.assertError(self.as_user(STRANGER, "DescribeSnapshots", {"DiskId": disk}),
                         "InvalidAction.Unauthorized")

    def disk_path(self, disk_id):
        return self.disk(disk_id)["SourcePath"]


if __name__ == "__main__":
    harness.main()
