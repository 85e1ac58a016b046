#!/usr/bin/env python3
"""The dsnap command against a running dsnapd (cli/dsnap.c): kebab-case
commands, --tag, --wait with JSON progress lines on stderr when it is not a
terminal, --output json, `dsnap call`, and the exit codes (1 for an API
error with its Code printed, 4 when the socket does not answer)."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import ApiTest  # noqa: E402


class Cli(ApiTest):

    @classmethod
    def setUpClass(cls):
        if not harness.DSNAP or not os.access(harness.DSNAP, os.X_OK):
            raise AssertionError("set DSNAP to the dsnap binary (tests/api/CMakeLists.txt does)")
        super().setUpClass()

    def dsnap(self, *args, socket=None):
        env = dict(os.environ)
        env.pop("DSNAP_SOCKET", None)
        env.pop("DSNAP_STATE", None)
        r = subprocess.run([harness.DSNAP, "--socket", socket or self.d.sock] + list(args),
                           capture_output=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout.decode(), r.stderr.decode()

    def test_create_snapshot_wait(self):
        disk, _ = self.new_disk(size=64 << 20)
        rc, out, err = self.dsnap("create-snapshot", "--disk-id", disk, "--snapshot-name", "n1",
                                  "--tag", "env=dev", "--client-token", "cli-token-1", "--wait")
        self.assertEqual(rc, 0, (out, err))
        sid = out.strip()
        self.assertRegex(sid, harness.SNAP_ID_RE, out)
        # Progress as JSON lines, one object each, ending accomplished.
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertGreaterEqual(len(lines), 1, err)
        objs = [json.loads(line) for line in lines]
        for o in objs:
            self.assertEqual(o["SnapshotId"], sid)
            self.assertRegex(o["Progress"], harness.PROGRESS_RE)
            self.assertIn(o["Status"], ("progressing", "accomplished"))
        self.assertEqual((objs[-1]["Status"], objs[-1]["Progress"]), ("accomplished", "100%"))
        s = self.snapshot(sid)
        self.assertEqual(s["Status"], "accomplished")
        self.assertEqual(s["SnapshotName"], "n1")
        self.assertEqual(s["Tags"]["Tag"], [{"TagKey": "env", "TagValue": "dev"}])
        # The same command again: the token gives the same id, nothing new.
        rc, out2, err2 = self.dsnap("create-snapshot", "--disk-id", disk, "--snapshot-name", "n1",
                                    "--tag", "env=dev", "--client-token", "cli-token-1", "--wait")
        self.assertEqual((rc, out2.strip()), (0, sid), err2)
        self.assertEqual(self.describe({"DiskId": disk})["TotalCount"], 1)

    def test_output_json(self):
        disk, _ = self.new_disk()
        rc, out, err = self.dsnap("--output", "json", "create-snapshot", "--disk-id", disk)
        self.assertEqual(rc, 0, err)
        j = json.loads(out)
        self.assertEqual(set(j), {"RequestId", "SnapshotId"})
        self.assertRegex(j["SnapshotId"], harness.SNAP_ID_RE)
        self.wait_snapshot(j["SnapshotId"])
        rc, out, err = self.dsnap("--output", "json", "describe-snapshots", "--snapshot-ids",
                                  j["SnapshotId"])
        self.assertEqual(rc, 0, err)
        lst = json.loads(out)
        self.assertEqual(lst["TotalCount"], 1)
        self.assertEqual(lst["Snapshots"]["Snapshot"][0]["SnapshotId"], j["SnapshotId"])

    def test_call(self):
        disk, _ = self.new_disk()
        done = self.create_snapshot(disk, {"SnapshotName": "called"})
        rc, out, err = self.dsnap("call", "DescribeSnapshots", "Status=accomplished",
                                  "DiskId=" + disk)
        self.assertEqual(rc, 0, err)
        self.assertIn("SnapshotId", out.splitlines()[0])
        self.assertIn(done, out)
        self.assertIn("accomplished", out)
        rc, out, err = self.dsnap("--output", "json", "call", "DescribeSnapshots",
                                  "Status=accomplished", "DiskId=" + disk)
        self.assertEqual(rc, 0, err)
        self.assertEqual([s["SnapshotId"] for s in json.loads(out)["Snapshots"]["Snapshot"]],
                         [done])

    def test_api_error(self):
        rc, out, err = self.dsnap("create-snapshot", "--disk-id", "d-doesnotexist00000000")
        self.assertEqual(rc, 1, (out, err))
        self.assertIn("InvalidDiskId.NotFound", err)
        disk, _ = self.new_disk()
        rc, out, err = self.dsnap("create-snapshot", "--disk-id", disk, "--snapshot-name", "1x")
        self.assertEqual(rc, 1, (out, err))
        self.assertIn("InvalidSnapshotName.Malformed", err)
        rc, out, err = self.dsnap("--output", "json", "call", "NoSuchAction")
        self.assertEqual(rc, 1, (out, err))
        self.assertIn("InvalidAction.NotFound", err)
        self.assertEqual(json.loads(out)["Code"], "InvalidAction.NotFound")
        self.assertEqual(self.describe({"DiskId": disk})["TotalCount"], 0)

    def test_command_help(self):
        # Help needs no daemon: the flags come from the API's own table.
        rc, out, err = self.dsnap("create-snapshot", "--help", socket="/nonexistent")
        self.assertEqual(rc, 0, (out, err))
        for flag in ["--disk-id", "--snapshot-name", "--retention-days", "--tag KEY=VALUE",
                     "--wait"]:
            self.assertIn(flag, out)
        rc, out, err = self.dsnap("reset-disk", "-h", socket="/nonexistent")
        self.assertEqual(rc, 0, (out, err))
        self.assertIn("--snapshot-id", out)
        self.assertNotIn("--wait", out)

    def test_dead_socket(self):
        dead = os.path.join(self.tmp, "dead.sock")
        rc, out, err = self.dsnap("describe-snapshots", socket=dead)
        self.assertEqual(rc, 4, (out, err))
        # A socket file nobody listens on.
        import socket as so
        s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
        s.bind(dead)
        s.close()
        rc, out, err = self.dsnap("describe-snapshots", socket=dead)
        self.assertEqual(rc, 4, (out, err))


if __name__ == "__main__":
    harness.main()
