#!/usr/bin/env python3
"""ClientToken (API.md "Idempotence"): 32 clients sending one token at once
make one snapshot; a repeat returns the same id and makes nothing; other
parameters with the token are IdempotentParameterMismatch; another user's
token is their own."""
import json
import os
import sys
import threading
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import ApiTest  # noqa: E402

NOBODY = 65534


class ClientToken(ApiTest):

    @classmethod
    def setUpClass(cls):
        # Another uid reaches the socket and may create snapshots (test_other_user).
        cls.policy_dir = harness.make_tmpdir("dsnap-api-policy-")
        cls.policy = os.path.join(cls.policy_dir, "policy")
        with open(cls.policy, "w") as f:
            f.write("uid:%d CreateSnapshot,DescribeSnapshots *\n" % NOBODY)
        cls.CONFIG = {"socket_mode": "0666", "policy": cls.policy}
        super().setUpClass()
        os.chmod(cls.tmp, 0o755)
        cls.addClassCleanup(harness.remove_tmpdir, cls.policy_dir)

    def count(self, disk):
        return self.describe({"DiskId": disk, "MaxResults": 100})["TotalCount"]

    def test_concurrent_clients(self):
        disk, _ = self.new_disk(size=4 << 20)
        params = {"DiskId": disk, "SnapshotName": "once", "ClientToken": "token-32-clients",
                  "Tag.1.Key": "env", "Tag.1.Value": "dev"}
        n = 32
        barrier = threading.Barrier(n)
        answers = [None] * n

        def client(i):
            barrier.wait()
            try:
                answers[i] = self.call("CreateSnapshot", params)
            except Exception as e:  # reported below
                answers[i] = e

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        errors = [a for a in answers if not isinstance(a, harness.Answer)]
        self.assertEqual(errors, [])
        ok = [a for a in answers if a.status == 200]
        others = [a for a in answers if a.status != 200]
        harness.log("32 clients: %d answered the id, %d IdempotentProcessing" %
                    (len(ok), len(others)))
        self.assertGreaterEqual(len(ok), 1, answers)
        ids = {self.assertOk(a, ["SnapshotId"])["SnapshotId"] for a in ok}
        self.assertEqual(len(ids), 1, ids)
        for a in others:
            self.assertError(a, "IdempotentProcessing")
        sid = ids.pop()
        self.assertEqual(self.count(disk), 1)
        self.wait_snapshot(sid)

        # Afterwards: the same id, nothing made, whatever the order of the
        # parameters or the answer format.
        again = self.assertOk(self.call("CreateSnapshot", params), ["SnapshotId"])
        self.assertEqual(again["SnapshotId"], sid)
        shuffled = dict(reversed(list(params.items())))
        self.assertEqual(self.assertOk(self.call("CreateSnapshot", shuffled))["SnapshotId"], sid)
        a = self.call("CreateSnapshot", dict(params, Format="XML"))
        self.assertEqual(a.status, 200, a)
        self.assertEqual(ET.fromstring(a.body).findtext("SnapshotId"), sid)
        self.assertEqual(self.count(disk), 1)

        # The token with other parameters.
        for other in [dict(params, SnapshotName="twice"),
                      dict(params, **{"Tag.1.Value": "prod"}),
                      dict(params, Description="more words"),
                      {"DiskId": disk, "ClientToken": "token-32-clients"}]:
            with self.subTest(params=other):
                self.assertError(self.call("CreateSnapshot", other), "IdempotentParameterMismatch")
        other_disk, _ = self.new_disk()
        self.assertError(self.call("CreateSnapshot", dict(params, DiskId=other_disk)),
                         "IdempotentParameterMismatch")
        self.assertError(self.call("CreateDisk", {"Size": "1", "ClientToken": "token-32-clients"}),
                         "IdempotentParameterMismatch")
        self.assertEqual(self.count(disk), 1)
        self.assertEqual(self.count(other_disk), 0)

    def test_create_disk_token(self):
        before = self.assertOk(self.call("DescribeDisks", {"MaxResults": 100}))["TotalCount"]
        a = self.assertOk(self.call("CreateDisk", {"Size": "1", "ClientToken": "disk-token"}))
        b = self.assertOk(self.call("CreateDisk", {"Size": "1", "ClientToken": "disk-token"}))
        self.assertEqual(a["DiskId"], b["DiskId"])
        self.assertError(self.call("CreateDisk", {"Size": "2", "ClientToken": "disk-token"}),
                         "IdempotentParameterMismatch")
        after = self.assertOk(self.call("DescribeDisks", {"MaxResults": 100}))["TotalCount"]
        self.assertEqual(after, before + 1)

    def test_other_user(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to run requests as uid %d" % NOBODY)
        disk, _ = self.new_disk()
        params = {"DiskId": disk, "ClientToken": "shared-token"}
        mine = self.assertOk(self.call("CreateSnapshot", params))["SnapshotId"]
        self.wait_snapshot(mine)
        a = harness.call_as(NOBODY, NOBODY, self.d.sock, dict(params, Action="CreateSnapshot"))
        theirs = self.assertOk(a, ["SnapshotId"])["SnapshotId"]
        self.assertNotEqual(theirs, mine)
        self.wait_snapshot(theirs)
        again = harness.call_as(NOBODY, NOBODY, self.d.sock, dict(params, Action="CreateSnapshot"))
        self.assertEqual(self.assertOk(again)["SnapshotId"], theirs)
        self.assertEqual(self.assertOk(self.call("CreateSnapshot", params))["SnapshotId"], mine)
        # Their mismatch is theirs alone.
        a = harness.call_as(NOBODY, NOBODY, self.d.sock,
                            {"Action": "CreateSnapshot", "DiskId": disk,
                             "ClientToken": "shared-token", "SnapshotName": "other"})
        self.assertError(a, "IdempotentParameterMismatch")
        self.assertEqual(sorted(s["SnapshotId"] for s in self.describe(
            {"DiskId": disk})["Snapshots"]["Snapshot"]), sorted([mine, theirs]))
        self.assertEqual(self.count(disk), 2)


if __name__ == "__main__":
    harness.main()
