#!/usr/bin/env python3
"""CreateSnapshot's parameter rules (API.md, "CreateSnapshot"): each rule
with its code, HTTP status and error body, the values at both ends of each
range accepted, and a refused request changing nothing."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import ApiTest  # noqa: E402


class CreateSnapshotParams(ApiTest):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.created = 0

    def setUp(self):
        if not hasattr(type(self), "disk_id"):
            type(self).disk_id, _ = self.new_disk()

    def count(self):
        j = self.describe({"DiskId": self.disk_id, "MaxResults": 100})
        return j["TotalCount"]

    def ok(self, params):
        """A request the rules accept: it creates a snapshot."""
        p = {"DiskId": self.disk_id}
        p.update(params)
        for _ in range(500):
            a = self.call("CreateSnapshot", p)
            if a.code != "IncorrectDiskStatus.CreatingSnapshot":
                break
        j = self.assertOk(a, ["SnapshotId"], msg="%r refused: %r" % (params, a))
        self.assertRegex(j["SnapshotId"], harness.SNAP_ID_RE)
        type(self).created += 1
        return self.wait_snapshot(j["SnapshotId"])

    def bad(self, params, code, with_disk=True):
        p = {"DiskId": self.disk_id} if with_disk else {}
        p.update(params)
        before = self.count()
        a = self.call("CreateSnapshot", p)
        if a.status == 200:  # wrongly accepted: it made a snapshot, counted for tearDownClass
            type(self).created += 1
            self.wait_snapshot(a.json["SnapshotId"])
        self.assertError(a, code, msg="%r: want %s, got %r" % (params, code, a))
        self.assertEqual(self.count(), before, "a refused request made a snapshot: %r" % (params,))

    # ---- DiskId ----

    def test_disk_id(self):
        self.bad({}, "MissingParameter", with_disk=False)
        self.bad({"DiskId": ""}, "MissingParameter", with_disk=False)
        self.bad({"DiskId": "d-doesnotexist00000000"}, "InvalidDiskId.NotFound", with_disk=False)
        self.bad({"DiskId": "nonsense"}, "InvalidDiskId.NotFound", with_disk=False)

    # ---- SnapshotName ----

    def test_name_accepted(self):
        for name in ["ab", "快照1", "快照", "a" * 128, "Nightly:2026_11.22-a", "Ünïcødé-1",
                     "a1", "Zz"]:
            s = self.ok({"SnapshotName": name})
            self.assertEqual(s["SnapshotName"], name)

    def test_name_refused(self):
        for name in ["a", "a" * 129, "快" * 129, "1abc", "9", "a b", " ab", "ab ",
                     "http://ab", "https://ab", "auto", "autoSnap1", "auto-1", "-ab", "_ab",
                     ".ab", ":ab", "a/b", "a@b", "a,b", "a\tb", "ab!"]:
            self.bad({"SnapshotName": name}, "InvalidSnapshotName.Malformed")

    def test_name_unicode_letter_category(self):
        # "starts with a letter (Unicode letter category)", "then letters,
        # digits 0-9, : _ . -": digits of other scripts (Nd), letter-like
        # numbers (Nl) and combining marks (Mn) are not letters.
        for name in ["１abc",          # FULLWIDTH DIGIT ONE, Nd
                     "١٢٣",           # ARABIC-INDIC DIGITS, Nd
                     "०ab",            # DEVANAGARI DIGIT ZERO, Nd
                     "Ⅰab",            # ROMAN NUMERAL ONE, Nl
                     "\u0345ab",       # COMBINING GREEK YPOGEGRAMMENI, Mn
                     "a١",            # a digit that is not 0-9 after the first letter
                     "ab１"]:
            with self.subTest(name=name):
                self.bad({"SnapshotName": name}, "InvalidSnapshotName.Malformed")

    # ---- Description ----

    def test_description(self):
        for desc in ["ab", "x" * 256, "描述", "nightly backup, see http://x", "a<b>&\"c'",
                     "two\nlines"]:
            s = self.ok({"Description": desc})
            self.assertEqual(s["Description"], desc)
        for desc in ["a", "x" * 257, "描" * 257, "http://example.com", "https://example.com/x"]:
            self.bad({"Description": desc}, "InvalidDescription.Malformed")

    # ---- RetentionDays ----

    def test_retention_days(self):
        for v in ["1", "65536", "30"]:
            s = self.ok({"RetentionDays": v})
            self.assertEqual(int(s["RetentionDays"]), int(v))
        for v in ["0", "65537", "-1", "abc", "1.5", "1e3", "0x10", " 5", "99999999999999999999"]:
            self.bad({"RetentionDays": v}, "InvalidRetentionDays.Malformed")

    # ---- Category, InstantAccess ----

    def test_category(self):
        for v in ["Standard", "Flash"]:
            s = self.ok({"Category": v})
            self.assertEqual(s["Category"], v)
        for v in ["standard", "Premium", "flash", "Standard "]:
            self.bad({"Category": v}, "InvalidSnapshotCategory.Malformed")
        self.bad({"Category": "Standard", "InstantAccess": "true"},
                 "InvalidCategoryAndInstantAccess.Malformed")
        self.bad({"Category": "Flash", "InstantAccess": "false"},
                 "InvalidCategoryAndInstantAccess.Malformed")

    def test_instant_access(self):
        s = self.ok({"InstantAccess": "true"})
        self.assertIs(s["InstantAccess"], True)
        s = self.ok({"InstantAccess": "false"})
        self.assertIs(s["InstantAccess"], False)
        for v in ["1", "65535"]:
            self.ok({"InstantAccess": "true", "InstantAccessRetentionDays": v})
        for v in ["0", "65536", "-1", "x", "1.5"]:
            self.bad({"InstantAccess": "true", "InstantAccessRetentionDays": v},
                     "InvalidInstantAccessRetentionDays.Malformed")

    # ---- ClientToken ----

    def test_client_token(self):
        self.ok({"ClientToken": "t" * 64})
        self.ok({"ClientToken": "a-Token_with.punct:~!@#$%^&*()"})
        self.bad({"ClientToken": "t" * 65}, "InvalidClientToken.Malformed")
        self.bad({"ClientToken": "tökén"}, "InvalidClientToken.Malformed")
        self.bad({"ClientToken": "令牌"}, "InvalidClientToken.Malformed")

    # ---- tags ----

    def test_tags_accepted(self):
        s = self.ok({"Tag.1.Key": "env", "Tag.1.Value": "dev", "Tag.2.Key": "empty",
                     "Tag.2.Value": "", "Tag.3.Key": "k" * 128, "Tag.3.Value": "v" * 128,
                     "Tag.4.Key": "键", "Tag.4.Value": "值"})
        tags = s["Tags"]["Tag"]
        self.assertEqual(sorted((t["TagKey"], t["TagValue"]) for t in tags),
                         sorted([("env", "dev"), ("empty", ""), ("k" * 128, "v" * 128),
                                 ("键", "值")]))
        for t in tags:
            self.assertEqual(set(t), {"TagKey", "TagValue"})

    def test_tags_lowercase_aliases(self):
        s = self.ok({"Tag.1.key": "team", "Tag.1.value": "storage", "Tag.2.Key": "x",
                     "Tag.2.value": "y"})
        self.assertEqual(sorted((t["TagKey"], t["TagValue"]) for t in s["Tags"]["Tag"]),
                         [("team", "storage"), ("x", "y")])

    def test_twenty_tags(self):
        p = {}
        for n in range(1, 21):
            p["Tag.%d.Key" % n] = "k%d" % n
            p["Tag.%d.Value" % n] = "v%d" % n
        s = self.ok(p)
        self.assertEqual(len(s["Tags"]["Tag"]), 20)
        p["Tag.21.Key"] = "k21"
        p["Tag.21.Value"] = "v21"
        self.bad(p, "QuotaExceed.Tags")
        self.bad({"Tag.21.Key": "k"}, "QuotaExceed.Tags")

    def test_tag_key_refused(self):
        for key in ["", "k" * 129, "acs:x", "aliyun", "aliyunKey", "ahttp://b", "xhttps://y"]:
            self.bad({"Tag.1.Key": key, "Tag.1.Value": "v"}, "InvalidTagKey.Malformed")
        self.bad({"Tag.1.Value": "v"}, "InvalidTagKey.Malformed")

    def test_tag_value_refused(self):
        for value in ["v" * 129, "acs:x", "a https://b", "http://x"]:
            self.bad({"Tag.1.Key": "k", "Tag.1.Value": value}, "InvalidTagValue.Malformed")

    def test_duplicate_tag_key(self):
        self.bad({"Tag.1.Key": "env", "Tag.1.Value": "a", "Tag.2.Key": "env",
                  "Tag.2.Value": "b"}, "Duplicate.TagKey")
        self.bad({"Tag.1.Key": "env", "Tag.3.key": "env"}, "Duplicate.TagKey")

    # ---- ResourceGroupId, StorageLocationArn ----

    def test_resource_group(self):
        self.bad({"ResourceGroupId": "rg-doesnotexist"}, "InvalidResourceGroup.NotFound")
        j = self.assertOk(self.call("CreateResourceGroup", {"Name": "backups"}),
                          ["ResourceGroupId"])
        rg = j["ResourceGroupId"]
        s = self.ok({"ResourceGroupId": rg})
        self.assertEqual(s["ResourceGroupId"], rg)
        lst = self.describe({"ResourceGroupId": rg})
        self.assertEqual([x["SnapshotId"] for x in lst["Snapshots"]["Snapshot"]],
                         [s["SnapshotId"]])
        groups = self.assertOk(self.call("ListResourceGroups"))
        self.assertIn(rg, [g["Id"] for g in groups["ResourceGroups"]["ResourceGroup"]])

    def test_storage_location_arn(self):
        self.bad({"StorageLocationArn": "acs:ecs:local:1:storage/x"},
                 "InvalidStorageLocationArn.Malformed")

    # ---- the answer ----

    def test_answer_shape(self):
        a = self.call("CreateSnapshot", {"DiskId": self.disk_id, "SnapshotName": "shape"})
        for _ in range(500):
            if a.code != "IncorrectDiskStatus.CreatingSnapshot":
                break
            a = self.call("CreateSnapshot", {"DiskId": self.disk_id, "SnapshotName": "shape"})
        j = self.assertOk(a, ["SnapshotId"])
        self.assertEqual(list(j), ["RequestId", "SnapshotId"])
        type(self).created += 1
        self.wait_snapshot(j["SnapshotId"])

    @classmethod
    def tearDownClass(cls):
        # Every accepted request made one snapshot, every refused one none.
        a = cls.d.call("DescribeSnapshots", {"DiskId": getattr(cls, "disk_id", "x"),
                                             "MaxResults": 100})
        total = a.json["TotalCount"] if a.json else None
        if hasattr(cls, "disk_id") and total != cls.created:
            raise AssertionError("%s snapshots on the disk, %d accepted" % (total, cls.created))
        super().tearDownClass()


if __name__ == "__main__":
    harness.main()
