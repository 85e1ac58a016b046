#!/usr/bin/env python3
"""The calls around CreateSnapshot (API.md "The calls around it", "Answer
shapes"): DescribeSnapshots filters, paging and entry fields, DeleteSnapshot,
ModifySnapshotAttribute, DescribeSnapshotsUsage, ResetDisk, CreateDisk,
RegisterDisk, DescribeDisks, DeleteDisk; CreateSnapshot's disk
preconditions (file gone, file open for writing, 256 snapshots)."""
import calendar
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import ApiTest  # noqa: E402

# The entry fields API.md lists for DescribeSnapshots.
SNAPSHOT_FIELDS = ["SnapshotId", "SnapshotName", "Description", "Status", "Progress", "Available",
                   "SourceDiskId", "SourceDiskSize", "SourceDiskType", "CreationTime",
                   "LastModifiedTime", "RetentionDays", "Usage", "Tags", "ResourceGroupId",
                   "Category", "InstantAccess"]
DISK_FIELDS = ["DiskId", "DiskName", "Status", "Size", "Device", "SourcePath", "FsType", "FsUuid",
               "CreationTime"]


def iso_to_epoch(s):
    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))


class Snapshots(ApiTest):

    def check_entry(self, s):
        """Every field of API.md, with its type."""
        missing = [f for f in SNAPSHOT_FIELDS if f not in s]
        # RetentionDays is left out of a snapshot kept until deleted.
        if missing == ["RetentionDays"]:
            missing = []
        self.assertEqual(missing, [], s)
        self.assertRegex(s["SnapshotId"], harness.SNAP_ID_RE)
        self.assertIn(s["Status"], ("progressing", "accomplished", "failed"))
        self.assertRegex(s["Progress"], harness.PROGRESS_RE)
        self.assertIsInstance(s["Available"], bool)
        self.assertRegex(s["SourceDiskId"], harness.DISK_ID_RE)
        self.assertRegex(str(s["SourceDiskSize"]), r"^\d+$")
        self.assertRegex(s["CreationTime"], harness.ISO_RE)
        self.assertRegex(s["LastModifiedTime"], harness.ISO_RE)
        self.assertLessEqual(iso_to_epoch(s["CreationTime"]), iso_to_epoch(s["LastModifiedTime"]))
        self.assertLess(abs(iso_to_epoch(s["CreationTime"]) - time.time()), 600,
                        "CreationTime is not UTC now: %r" % s["CreationTime"])
        self.assertIsInstance(s["InstantAccess"], bool)
        self.assertEqual(list(s["Tags"]), ["Tag"])
        self.assertIsInstance(s["Tags"]["Tag"], list)
        for t in s["Tags"]["Tag"]:
            self.assertEqual(set(t), {"TagKey", "TagValue"})
        if s["Status"] == "accomplished":
            self.assertEqual(s["Progress"], "100%")

    def test_entry_fields(self):
        disk, _ = self.new_disk(size=3 << 20)
        sid = self.create_snapshot(disk, {"SnapshotName": "fields", "Description": "all of them",
                                          "RetentionDays": "7", "Tag.1.Key": "env",
                                          "Tag.1.Value": "dev"})
        s = self.snapshot(sid)
        self.check_entry(s)
        self.assertEqual(s["SnapshotName"], "fields")
        self.assertEqual(s["Description"], "all of them")
        self.assertEqual(s["Status"], "accomplished")
        self.assertIs(s["Available"], True)
        self.assertEqual(s["SourceDiskId"], disk)
        self.assertEqual(int(s["SourceDiskSize"]), 1)  # GiB, rounded up
        self.assertEqual(int(s["RetentionDays"]), 7)
        self.assertEqual(s["Tags"], {"Tag": [{"TagKey": "env", "TagValue": "dev"}]})
        self.assertEqual(s["Category"], "Standard")
        plain = self.snapshot(self.create_snapshot(disk))
        self.check_entry(plain)
        self.assertEqual(plain["Tags"], {"Tag": []})

    def test_list_shape(self):
        j = self.describe()
        for k in ("TotalCount", "NextToken", "Snapshots"):
            self.assertIn(k, j)
        self.assertIsInstance(j["TotalCount"], int)
        self.assertEqual(list(j["Snapshots"]), ["Snapshot"])
        self.assertIsInstance(j["Snapshots"]["Snapshot"], list)

    def test_filters(self):
        a, _ = self.new_disk()
        b, _ = self.new_disk()
        rg = self.assertOk(self.call("CreateResourceGroup", {"Name": "filters"}))["ResourceGroupId"]
        a1 = self.create_snapshot(a, {"SnapshotName": "alpha", "Tag.1.Key": "env",
                                      "Tag.1.Value": "dev"})
        a2 = self.create_snapshot(a, {"SnapshotName": "beta", "Tag.1.Key": "env",
                                      "Tag.1.Value": "prod", "ResourceGroupId": rg})
        b1 = self.create_snapshot(b, {"SnapshotName": "alpha", "Tag.1.Key": "team",
                                      "Tag.1.Value": "x"})

        def ids(params):
            j = self.describe(params)
            got = [s["SnapshotId"] for s in j["Snapshots"]["Snapshot"]]
            self.assertEqual(j["TotalCount"], len(got))
            for s in j["Snapshots"]["Snapshot"]:
                self.check_entry(s)
            return sorted(got)

        self.assertEqual(ids({"DiskId": a}), sorted([a1, a2]))
        self.assertEqual(ids({"DiskId": b}), [b1])
        self.assertEqual(ids({"SnapshotIds": json.dumps([a1, b1])}), sorted([a1, b1]))
        self.assertEqual(ids({"SnapshotIds": json.dumps([a1, b1]), "DiskId": b}), [b1])
        self.assertEqual(ids({"SnapshotIds": "[]"}), [])
        self.assertEqual(ids({"SnapshotIds": json.dumps(["s-nothere0000000000000"])}), [])
        self.assertEqual(ids({"SnapshotName": "alpha", "SnapshotIds": json.dumps([a1, a2, b1])}),
                         sorted([a1, b1]))
        self.assertEqual(ids({"DiskId": a, "Status": "accomplished"}), sorted([a1, a2]))
        self.assertEqual(ids({"DiskId": a, "Status": "all"}), sorted([a1, a2]))
        self.assertEqual(ids({"DiskId": a, "Status": "progressing"}), [])
        self.assertEqual(ids({"DiskId": a, "Status": "failed"}), [])
        self.assertEqual(ids({"DiskId": a, "SnapshotType": "user"}), sorted([a1, a2]))
        self.assertEqual(ids({"DiskId": a, "SnapshotType": "all"}), sorted([a1, a2]))
        self.assertEqual(ids({"DiskId": a, "SnapshotType": "auto"}), [])
        self.assertEqual(ids({"DiskId": a, "Tag.1.Key": "env"}), sorted([a1, a2]))
        self.assertEqual(ids({"DiskId": a, "Tag.1.Key": "env", "Tag.1.Value": "prod"}), [a2])
        self.assertEqual(ids({"Tag.1.Key": "team", "Tag.1.Value": "x"}), [b1])
        self.assertEqual(ids({"Tag.1.key": "team", "Tag.1.value": "x"}), [b1])
        self.assertEqual(ids({"Tag.1.Key": "env", "Tag.2.Key": "team"}), [])
        self.assertEqual(ids({"ResourceGroupId": rg}), [a2])

    def test_filter_errors(self):
        for v in ["s-1", "[s-1]", '["s-1",2]', "{}", '"s-1"', "[", '["s-1"] x', "[[]]", "null"]:
            with self.subTest(SnapshotIds=v):
                self.assertError(self.call("DescribeSnapshots", {"SnapshotIds": v}),
                                 "InvalidSnapshotIds.Malformed")
        self.assertError(self.call("DescribeSnapshots", {"Status": "done"}),
                         "InvalidStatus.ValueNotSupported")
        self.assertError(self.call("DescribeSnapshots", {"SnapshotType": "manual"}),
                         "InvalidSnapshotType.ValueNotSupported")
        for v in ["0", "101", "x", "-1", "1.5"]:
            with self.subTest(MaxResults=v):
                self.assertError(self.call("DescribeSnapshots", {"MaxResults": v}),
                                 "InvalidMaxResults.Malformed")
        self.assertError(self.call("DescribeSnapshots", {"NextToken": "garbage"}),
                         "InvalidNextToken.Malformed")

    def test_paging(self):
        disk, _ = self.new_disk()
        made = [self.create_snapshot(disk) for _ in range(12)]
        seen, token, pages = [], None, 0
        while True:
            p = {"DiskId": disk, "MaxResults": 1}
            if token:
                p["NextToken"] = token
            j = self.describe(p)
            self.assertEqual(j["TotalCount"], 12)
            self.assertLessEqual(len(j["Snapshots"]["Snapshot"]), 1)
            seen += [s["SnapshotId"] for s in j["Snapshots"]["Snapshot"]]
            pages += 1
            token = j.get("NextToken")
            if not token:
                break
            self.assertLess(pages, 20, "NextToken never ends")
        self.assertEqual(sorted(seen), sorted(made))
        self.assertEqual(len(seen), len(set(seen)))
        # The default page is 10, MaxResults up to 100.
        j = self.describe({"DiskId": disk})
        self.assertEqual(len(j["Snapshots"]["Snapshot"]), 10)
        self.assertTrue(j["NextToken"])
        j2 = self.describe({"DiskId": disk, "NextToken": j["NextToken"]})
        self.assertEqual(len(j2["Snapshots"]["Snapshot"]), 2)
        self.assertFalse(j2.get("NextToken"))
        j = self.describe({"DiskId": disk, "MaxResults": 100})
        self.assertEqual(len(j["Snapshots"]["Snapshot"]), 12)
        self.assertFalse(j.get("NextToken"))

    def test_delete_snapshot(self):
        disk, _ = self.new_disk()
        sid = self.create_snapshot(disk)
        self.assertError(self.call("DeleteSnapshot", {"SnapshotId": "s-doesnotexist0000000"}),
                         "InvalidSnapshotId.NotFound")
        self.assertError(self.call("DeleteSnapshot"), "MissingParameter")
        self.assertOk(self.call("DeleteSnapshot", {"SnapshotId": sid}), [])
        self.assertIsNone(self.snapshot(sid))
        self.assertError(self.call("DeleteSnapshot", {"SnapshotId": sid}),
                         "InvalidSnapshotId.NotFound")
        sid = self.create_snapshot(disk)
        self.assertOk(self.call("DeleteSnapshot", {"SnapshotId": sid, "Force": "true"}))
        self.assertIsNone(self.snapshot(sid))

    def test_modify_snapshot(self):
        disk, _ = self.new_disk()
        sid = self.create_snapshot(disk, {"SnapshotName": "before", "Description": "old one"})
        s0 = self.snapshot(sid)
        time.sleep(1.1)  # LastModifiedTime has seconds
        self.assertOk(self.call("ModifySnapshotAttribute", {
            "SnapshotId": sid, "SnapshotName": "after", "Description": "新的描述",
            "RetentionDays": "12"}))
        s = self.snapshot(sid)
        self.assertEqual(s["SnapshotName"], "after")
        self.assertEqual(s["Description"], "新的描述")
        self.assertEqual(int(s["RetentionDays"]), 12)
        self.assertEqual(s["CreationTime"], s0["CreationTime"])
        self.assertGreater(iso_to_epoch(s["LastModifiedTime"]), iso_to_epoch(s0["LastModifiedTime"]))
        # Only what is given changes.
        self.assertOk(self.call("ModifySnapshotAttribute", {"SnapshotId": sid,
                                                            "Description": "only this"}))
        s = self.snapshot(sid)
        self.assertEqual((s["SnapshotName"], s["Description"], int(s["RetentionDays"])),
                         ("after", "only this", 12))
        for params, code in [({"SnapshotName": "1bad"}, "InvalidSnapshotName.Malformed"),
                             ({"SnapshotName": "autoX"}, "InvalidSnapshotName.Malformed"),
                             ({"SnapshotName": "x" * 129}, "InvalidSnapshotName.Malformed"),
                             ({"Description": "h"}, "InvalidDescription.Malformed"),
                             ({"Description": "https://x"}, "InvalidDescription.Malformed"),
                             ({"RetentionDays": "0"}, "InvalidRetentionDays.Malformed"),
                             ({"RetentionDays": "65537"}, "InvalidRetentionDays.Malformed"),
                             ({"RetentionDays": "x"}, "InvalidRetentionDays.Malformed"),
                             ({"SnapshotName": "fine", "RetentionDays": "-3"},
                              "InvalidRetentionDays.Malformed")]:
            with self.subTest(params=params):
                self.assertError(self.call("ModifySnapshotAttribute",
                                           dict(params, SnapshotId=sid)), code)
        s = self.snapshot(sid)
        self.assertEqual((s["SnapshotName"], s["Description"], int(s["RetentionDays"])),
                         ("after", "only this", 12), "a refused modification changed something")
        self.assertError(self.call("ModifySnapshotAttribute",
                                   {"SnapshotId": "s-doesnotexist0000000", "SnapshotName": "ab"}),
                         "InvalidSnapshotId.NotFound")
        self.assertError(self.call("ModifySnapshotAttribute", {"SnapshotName": "ab"}),
                         "MissingParameter")

    def test_usage(self):
        j = self.assertOk(self.call("DescribeSnapshotsUsage"), ["SnapshotCount", "SnapshotSize"])
        self.assertIsInstance(j["SnapshotCount"], int)
        self.assertIsInstance(j["SnapshotSize"], int)
        total = self.describe({"MaxResults": 1})["TotalCount"]
        self.assertEqual(j["SnapshotCount"], total)
        disk, _ = self.new_disk(size=2 << 20)
        self.create_snapshot(disk)
        j2 = self.assertOk(self.call("DescribeSnapshotsUsage"), ["SnapshotCount", "SnapshotSize"])
        self.assertEqual(j2["SnapshotCount"], j["SnapshotCount"] + 1)
        # 2 MiB of random bytes do not compress.
        self.assertGreaterEqual(j2["SnapshotSize"] - j["SnapshotSize"], 2 << 20)
        self.assertError(self.call("DescribeSnapshotsUsage", {"DiskId": disk}), "InvalidParameter")

    def test_snapshot_quota(self):
        # 256 manual snapshots of a 64 KiB disk, then QuotaExceed.Snapshot.
        disk, _ = self.new_disk(size=65536)
        t0 = time.monotonic()
        made = []
        while len(made) < 256:
            a = self.call("CreateSnapshot", {"DiskId": disk})
            if a.code == "IncorrectDiskStatus.CreatingSnapshot":
                time.sleep(0.002)
                continue
            made.append(self.assertOk(a, ["SnapshotId"])["SnapshotId"])
        for _ in range(1000):
            a = self.call("CreateSnapshot", {"DiskId": disk})
            if a.code != "IncorrectDiskStatus.CreatingSnapshot":
                break
            time.sleep(0.002)
        self.assertError(a, "QuotaExceed.Snapshot")
        harness.log("256 snapshots of a 64 KiB disk in %.1f s" % (time.monotonic() - t0))
        self.assertEqual(self.describe({"DiskId": disk})["TotalCount"], 256)
        # Another disk is not limited by this one's count.
        other, _ = self.new_disk()
        self.create_snapshot(other)
        # One deleted, one more fits.
        self.wait_snapshot(made[-1])
        self.assertOk(self.call("DeleteSnapshot", {"SnapshotId": made[0]}))
        self.create_snapshot(disk)
        self.assertError(self.call("CreateSnapshot", {"DiskId": disk}), "QuotaExceed.Snapshot")


class Disks(ApiTest):

    def test_register(self):
        path = harness.write_random(os.path.join(self.tmp, "reg.img"), 1 << 20)
        j = self.assertOk(self.call("RegisterDisk", {"Path": path}), ["DiskId"])
        self.assertRegex(j["DiskId"], harness.DISK_ID_RE)
        again = self.assertOk(self.call("RegisterDisk", {"Path": path}), ["DiskId"])
        self.assertEqual(again["DiskId"], j["DiskId"])
        # The same file under another name is the same disk.
        link = os.path.join(self.tmp, "reg-link.img")
        os.link(path, link)
        self.assertEqual(self.assertOk(self.call("RegisterDisk", {"Path": link}))["DiskId"],
                         j["DiskId"])
        self.assertEqual(self.assertOk(self.call("DescribeDisks", {
            "DiskIds": json.dumps([j["DiskId"]])}))["TotalCount"], 1)

    def test_register_errors(self):
        self.assertError(self.call("RegisterDisk"), "MissingParameter")
        self.assertError(self.call("RegisterDisk", {"Path": os.path.join(self.tmp, "nope.img")}),
                         "InvalidPath.NotFound")
        self.assertError(self.call("RegisterDisk", {"Path": "/nonexistent-dir/x.img"}),
                         "InvalidPath.NotFound")
        self.assertError(self.call("RegisterDisk", {"Path": "/dev/null"}),
                         "DiskCategory.OperationNotSupported")
        self.assertError(self.call("RegisterDisk", {"Path": self.tmp}),
                         "DiskCategory.OperationNotSupported")
        self.assertError(self.call("RegisterDisk", {"Path": "disk.img"}), "InvalidPath.Malformed")
        self.assertError(self.call("RegisterDisk", {"Path": "./disk.img"}), "InvalidPath.Malformed")
        path = harness.write_random(os.path.join(self.tmp, "named.img"), 65536)
        self.assertError(self.call("RegisterDisk", {"Path": path, "DiskName": "1bad"}),
                         "InvalidDiskName.Malformed")
        before = self.assertOk(self.call("DescribeDisks", {"MaxResults": 100}))["TotalCount"]
        self.assertEqual(self.assertOk(self.call("DescribeDisks", {"MaxResults": 100}))
                         ["TotalCount"], before)

    def test_describe_disks(self):
        mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
        if not os.access(mkfs, os.X_OK):
            self.skipTest("mkfs.ext4 is missing (e2fsprogs)")
        path = os.path.join(self.tmp, "ext4.img")
        with open(path, "wb") as f:
            f.truncate(16 << 20)
        fs_uuid = str(uuid.uuid4())
        subprocess.run([mkfs, "-q", "-F", "-U", fs_uuid, path], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        j = self.assertOk(self.call("RegisterDisk", {"Path": path, "DiskName": "data-1"}))
        disk = self.disk(j["DiskId"])
        for f in DISK_FIELDS:
            self.assertIn(f, disk)
        self.assertEqual(disk["DiskId"], j["DiskId"])
        self.assertEqual(disk["DiskName"], "data-1")
        self.assertEqual(disk["Status"], "Available")
        self.assertEqual(disk["Size"], 1)
        self.assertEqual(disk["Device"], "")
        self.assertEqual(disk["SourcePath"], path)
        self.assertEqual(disk["FsType"], "ext4")
        self.assertEqual(disk["FsUuid"], fs_uuid)
        self.assertRegex(disk["CreationTime"], harness.ISO_RE)
        self.assertLess(abs(iso_to_epoch(disk["CreationTime"]) - t0), 120,
                        "CreationTime %s is not now in UTC" % disk["CreationTime"])
        # A plain image: no file system; the name defaults to the file's.
        plain, ppath = self.new_disk()
        d2 = self.disk(plain)
        self.assertEqual((d2["FsType"], d2["FsUuid"]), ("", ""))
        self.assertEqual(d2["DiskName"], os.path.basename(ppath))
        # The list form.
        lst = self.assertOk(self.call("DescribeDisks", {"DiskIds": json.dumps([j["DiskId"], plain])}))
        self.assertEqual(lst["TotalCount"], 2)
        self.assertEqual(list(lst["Disks"]), ["Disk"])
        self.assertEqual(sorted(d["DiskId"] for d in lst["Disks"]["Disk"]),
                         sorted([j["DiskId"], plain]))
        self.assertError(self.call("DescribeDisks", {"DiskIds": "d-1"}), "InvalidDiskIds.Malformed")
        page = self.assertOk(self.call("DescribeDisks", {"MaxResults": 1}))
        self.assertEqual(len(page["Disks"]["Disk"]), 1)
        self.assertTrue(page["NextToken"])

    def test_create_disk(self):
        j = self.assertOk(self.call("CreateDisk", {"Size": "1", "DiskName": "blank"}), ["DiskId"])
        d = self.disk(j["DiskId"])
        self.assertEqual(d["Size"], 1)
        self.assertEqual(d["DiskName"], "blank")
        self.assertTrue(d["SourcePath"].startswith(self.d.state), d)
        self.assertEqual(os.stat(d["SourcePath"]).st_size, 1 << 30)
        for v in ["0", "65537", "x", "-1", "1.5", ""]:
            with self.subTest(Size=v):
                self.assertError(self.call("CreateDisk", {"Size": v}),
                                 "InvalidDiskSize.ValueNotSupported")
        self.assertError(self.call("CreateDisk"), "MissingParameter")
        self.assertError(self.call("CreateDisk", {"Size": "1", "DiskName": "9x"}),
                         "InvalidDiskName.Malformed")
        self.assertError(self.call("CreateDisk", {"SnapshotId": "s-doesnotexist0000000"}),
                         "InvalidSnapshotId.NotFound")
        # A blank disk can be snapshotted.
        self.create_snapshot(j["DiskId"])

    def test_create_disk_from_snapshot(self):
        disk, path = self.new_disk(size=(3 << 20) + 4096)
        want = harness.read_file(path)
        sid = self.create_snapshot(disk)
        with open(path, "r+b") as f:
            f.write(b"changed after the snapshot")
        j = self.assertOk(self.call("CreateDisk", {"SnapshotId": sid}), ["DiskId"])
        d = self.disk(j["DiskId"])
        self.assertEqual(harness.read_file(d["SourcePath"]), want)
        self.assertError(self.call("CreateDisk", {"SnapshotId": sid, "Size": "1"}),
                         "InvalidParameter")

    def test_reset_disk(self):
        disk, path = self.new_disk(size=2 << 20)
        want = harness.read_file(path)
        sid = self.create_snapshot(disk)
        harness.write_random(path, 2 << 20)  # new content, same file
        with open(path, "ab") as f:
            f.write(b"grown")
        self.assertNotEqual(harness.read_file(path), want)
        self.assertOk(self.call("ResetDisk", {"DiskId": disk, "SnapshotId": sid}), [])
        self.assertEqual(harness.read_file(path), want)
        self.assertEqual(self.disk(disk)["Status"], "Available")
        self.assertError(self.call("ResetDisk", {"DiskId": "d-doesnotexist00000000",
                                                 "SnapshotId": sid}), "InvalidDiskId.NotFound")
        self.assertError(self.call("ResetDisk", {"DiskId": disk,
                                                 "SnapshotId": "s-doesnotexist0000000"}),
                         "InvalidSnapshotId.NotFound")
        self.assertError(self.call("ResetDisk", {"DiskId": disk}), "MissingParameter")
        self.assertError(self.call("ResetDisk", {"SnapshotId": sid}), "MissingParameter")

    def test_reset_disk_from_another_disks_snapshot(self):
        # ResetDisk rolls a disk back to "one of its snapshots"; a snapshot
        # of another disk is refused (CreateDisk with SnapshotId is the way
        # to get a disk from it) and the disk stays as it was.
        disk, path = self.new_disk(size=1 << 20)
        other, _ = self.new_disk(size=2 << 20)
        theirs = self.create_snapshot(other)
        want = harness.read_file(path)
        a = self.call("ResetDisk", {"DiskId": disk, "SnapshotId": theirs})
        self.assertTrue(400 <= a.status < 500, a)
        self.assertError(a, a.code)
        self.assertEqual(harness.read_file(path), want)

    def test_reset_disk_in_use(self):
        # Another process has the image open: the reset is refused and the
        # image is left as it was.
        disk, path = self.new_disk(size=1 << 20)
        sid = self.create_snapshot(disk)
        harness.write_random(path, 1 << 20)
        now = harness.read_file(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            self.assertError(self.call("ResetDisk", {"DiskId": disk, "SnapshotId": sid}),
                             "IncorrectDiskStatus")
        finally:
            os.close(fd)
        self.assertEqual(harness.read_file(path), now)
        self.assertEqual(self.disk(disk)["Status"], "Available")

    def test_delete_disk(self):
        disk, path = self.new_disk()
        self.assertOk(self.call("DeleteDisk", {"DiskId": disk}), [])
        self.assertIsNone(self.disk(disk))
        self.assertTrue(os.path.exists(path), "DeleteDisk removed a registered image")
        self.assertError(self.call("DeleteDisk", {"DiskId": disk}), "InvalidDiskId.NotFound")
        self.assertError(self.call("DeleteDisk"), "MissingParameter")
        self.assertError(self.call("CreateSnapshot", {"DiskId": disk}), "InvalidDiskId.NotFound")
        j = self.assertOk(self.call("CreateDisk", {"Size": "1"}))
        created = self.disk(j["DiskId"])["SourcePath"]
        self.assertOk(self.call("DeleteDisk", {"DiskId": j["DiskId"]}))
        self.assertFalse(os.path.exists(created), "DeleteDisk left the image dsnap created")

    def test_disk_file_gone(self):
        disk, path = self.new_disk()
        os.unlink(path)
        self.assertError(self.call("CreateSnapshot", {"DiskId": disk}), "IncorrectDiskStatus")
        self.assertEqual(self.describe({"DiskId": disk})["TotalCount"], 0)
        # Forget it, so that a later image given its inode number is not taken for it.
        self.assertOk(self.call("DeleteDisk", {"DiskId": disk}))

    def test_register_moved_or_new_file(self):
        # Whatever id RegisterDisk answers for a path, that disk is the file at
        # the path: it can be snapshotted and DescribeDisks shows the path.
        # Two ways to meet a known inode: the file was renamed, or it was
        # deleted and the file system gave its inode number to a new file.
        def check(path):
            disk = self.assertOk(self.call("RegisterDisk", {"Path": path}))["DiskId"]
            self.assertEqual(self.disk(disk)["SourcePath"], path)
            self.create_snapshot(disk)
            return disk

        old = harness.write_random(os.path.join(self.tmp, "before-move.img"), 65536)
        disk = self.assertOk(self.call("RegisterDisk", {"Path": old}))["DiskId"]
        new = os.path.join(self.tmp, "after-move.img")
        os.rename(old, new)
        with self.subTest(case="renamed"):
            check(new)

        folder = os.path.join(self.tmp, "reuse")
        os.mkdir(folder)
        gone = harness.write_random(os.path.join(folder, "deleted.img"), 65536)
        ino = os.stat(gone).st_ino
        stale = self.assertOk(self.call("RegisterDisk", {"Path": gone}))["DiskId"]
        os.unlink(gone)
        for i in range(50):  # ext4 and tmpfs usually hand out the freed number at once
            fresh = harness.write_random(os.path.join(folder, "fresh%d.img" % i), 65536)
            if os.stat(fresh).st_ino == ino:
                break
        else:
            self.skipTest("the file system did not reuse the inode number")
        with self.subTest(case="inode number reused"):
            disk = check(fresh)
            self.assertNotEqual(disk, stale)

    def test_disk_open_for_writing(self):
        disk, path = self.new_disk()
        fd = os.open(path, os.O_WRONLY)
        try:
            self.assertError(self.call("CreateSnapshot", {"DiskId": disk}), "IncorrectDiskStatus")
        finally:
            os.close(fd)
        self.assertEqual(self.describe({"DiskId": disk})["TotalCount"], 0)
        self.create_snapshot(disk)

    def test_resource_groups(self):
        j = self.assertOk(self.call("CreateResourceGroup", {"Name": "grp"}), ["ResourceGroupId"])
        rg = j["ResourceGroupId"]
        self.assertRegex(rg, r"^rg-[a-z0-9]{20}$")
        self.assertError(self.call("CreateResourceGroup"), "MissingParameter")
        disk, _ = self.new_disk()
        sid = self.create_snapshot(disk, {"ResourceGroupId": rg})
        self.assertEqual(self.snapshot(sid)["ResourceGroupId"], rg)
        self.assertError(self.call("DeleteResourceGroup", {"ResourceGroupId": rg}),
                         "ResourceGroup.NotEmpty", status=403)
        self.assertOk(self.call("DeleteSnapshot", {"SnapshotId": sid}))
        self.assertOk(self.call("DeleteResourceGroup", {"ResourceGroupId": rg}))
        self.assertError(self.call("DeleteResourceGroup", {"ResourceGroupId": rg}),
                         "InvalidResourceGroup.NotFound")
        self.assertError(self.call("CreateSnapshot", {"DiskId": disk, "ResourceGroupId": rg}),
                         "InvalidResourceGroup.NotFound")


if __name__ == "__main__":
    harness.main()
