#!/usr/bin/env python3
"""The transport and the common parameters (API.md "Transport", doc/dsnapd.md):
Version, RegionId, signing parameters, Format=XML, malformed requests at
every level (parameters, HTTP, raw bytes), throttling, and the curl line
of the documentation."""
import json
import os
import shutil
import subprocess
import sys
import time
import unittest
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import ApiTest  # noqa: E402


class CommonParameters(ApiTest):

    def test_version(self):
        self.assertOk(self.call("DescribeSnapshots", {"Version": "2014-05-26"}))
        self.assertError(self.call("DescribeSnapshots", {"Version": "2015-01-01"}),
                         "InvalidVersion")
        self.assertError(self.call("CreateSnapshot", {"Version": "2015-01-01", "DiskId": "d-x"}),
                         "InvalidVersion")

    def test_region(self):
        self.assertOk(self.call("DescribeSnapshots", {"RegionId": "local"}))
        self.assertError(self.call("DescribeSnapshots", {"RegionId": "other"}),
                         "InvalidRegionId.NotFound")
        self.assertError(self.call("CreateSnapshot", {"RegionId": "cn-hangzhou", "DiskId": "d-x"}),
                         "InvalidRegionId.NotFound")

    def test_signing_parameters_ignored(self):
        disk, _ = self.new_disk()
        sdk = {"AccessKeyId": "LTAI5tAbCdEfGhIjKlMnOp", "Signature": "dGhpcyBpcyBub3Q=",
               "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
               "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
               "Timestamp": "2026-11-22T10:00:00Z", "SecurityToken": "CAIS...token",
               "Format": "JSON", "Version": "2014-05-26", "RegionId": "local"}
        p = dict(sdk, DiskId=disk, SnapshotName="sdk")
        sid = self.assertOk(self.call("CreateSnapshot", p), ["SnapshotId"])["SnapshotId"]
        s = self.wait_snapshot(sid)
        self.assertEqual(s["SnapshotName"], "sdk")
        self.assertOk(self.call("DescribeSnapshots", dict(sdk, SnapshotIds=json.dumps([sid]))))

    def test_unknown_parameter(self):
        a = self.assertError(self.call("DescribeSnapshots", {"Foo": "1"}), "InvalidParameter")
        self.assertIn("Foo", a["Message"])
        self.assertError(self.call("CreateSnapshot", {"DiskId": "d-x", "diskid": "d-x"}),
                         "InvalidParameter")

    def test_action(self):
        self.assertError(self.call("NoSuchAction"), "InvalidAction.NotFound")
        self.assertError(self.call("createsnapshot"), "InvalidAction.NotFound")
        a = self.assertError(self.d.req({"DiskId": "d-x"}), "MissingParameter")
        self.assertIn("Action", a["Message"])
        self.assertError(self.d.req(query=""), "MissingParameter")
        self.assertError(self.d.req({"Action": ""}), "InvalidAction.NotFound")

    def test_duplicate_parameter(self):
        self.assertError(self.d.req([("Action", "DescribeSnapshots"), ("MaxResults", "5"),
                                     ("MaxResults", "6")]), "InvalidParameter")
        self.assertError(self.d.req([("Action", "DescribeSnapshots"),
                                     ("Action", "DescribeSnapshots")]), "InvalidParameter")
        # Once in the query, once in the body.
        self.assertError(self.d.req(query="Action=DescribeSnapshots&MaxResults=5",
                                    method="POST", body=b"MaxResults=5",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"}),
                         "InvalidParameter")

    def test_bad_values(self):
        for q in ["Action=DescribeSnapshots&SnapshotName=a%00b",
                  "Action=DescribeSnapshots&SnapshotName=%00",
                  "Action=DescribeSnapshots&SnapshotName=%FF",
                  "Action=DescribeSnapshots&SnapshotName=a%C3",
                  "Action=DescribeSnapshots&SnapshotName=%C0%AF",  # overlong '/'
                  "Action=DescribeSnapshots&SnapshotName=%ED%A0%80",  # a surrogate
                  "Action=DescribeSnapshots&SnapshotName=a%01b",
                  "Action=CreateSnapshot&DiskId=d-x%00"]:
            with self.subTest(query=q):
                self.assertError(self.d.req(query=q), "InvalidParameter")

    def test_nul_in_parameter_name(self):
        # A name is checked like a value: "MaxResults\0evil" is not MaxResults.
        for q in ["Action=DescribeSnapshots&MaxResults%00evil=5",
                  "Action%00x=DescribeSnapshots",
                  "Action=DescribeSnapshots&%FF=1"]:
            with self.subTest(query=q):
                self.assertError(self.d.req(query=q), "InvalidParameter")

    def test_huge_value(self):
        big = "a" * 10240
        self.assertError(self.call("DescribeSnapshots", {"SnapshotName": big}), "InvalidParameter")
        self.assertError(self.call("DescribeSnapshots", {"SnapshotName": big}, method="POST"),
                         "InvalidParameter")
        self.assertError(self.call("CreateSnapshot", {"DiskId": "d-x", "Description": big}),
                         "InvalidParameter")

    def test_post_form(self):
        disk, _ = self.new_disk()
        a = self.call("CreateSnapshot", {"DiskId": disk, "SnapshotName": "posted"}, method="POST")
        sid = self.assertOk(a, ["SnapshotId"])["SnapshotId"]
        self.assertEqual(self.wait_snapshot(sid)["SnapshotName"], "posted")

    def test_post_too_big(self):
        body = ("Action=DescribeSnapshots&SnapshotName=" + "a" * (65 * 1024)).encode()
        a = self.d.req(method="POST", body=body,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(a.status, 413, a)
        self.assertError(a, "InvalidParameter", status=413)
        # Just under the limit is read (and refused for its huge value, not its size).
        body = ("Action=DescribeSnapshots&SnapshotName=" + "a" * (60 * 1024)).encode()
        a = self.d.req(method="POST", body=body,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertError(a, "InvalidParameter", status=400)

    def test_other_content_type(self):
        a = self.d.req(method="POST", body=b"Action=DescribeSnapshots",
                       headers={"Content-Type": "application/json"})
        self.assertError(a, "InvalidParameter", status=415)

    def test_method_and_path(self):
        for m in ["PUT", "DELETE", "PATCH"]:
            with self.subTest(method=m):
                a = self.d.req({"Action": "DescribeSnapshots"}, method=m)
                self.assertEqual(a.status, 405, a)
                self.assertEqual(set(a.json), harness.ERROR_KEYS, a)
                self.check_request_id(a)
        for path in ["/x", "/api", "//"]:
            with self.subTest(path=path):
                a = self.d.req({"Action": "DescribeSnapshots"}, path=path)
                self.assertEqual(a.status, 404, a)
                self.assertEqual(set(a.json), harness.ERROR_KEYS, a)
                self.check_request_id(a)

    def test_malformed_percent_encoding(self):
        for q in ["Action=DescribeSnapshots&SnapshotName=%4", "Action=DescribeSnapshots&x=%zz",
                  "Action=DescribeSnapshots%", "Action=Describe%G1Snapshots"]:
            with self.subTest(query=q):
                self.assertError(self.d.req(query=q), "InvalidParameter", status=400)

    def test_raw_malformed_http(self):
        cases = [b"\x00\xff\x13garbage\xfe\r\n\r\n",
                 b"GET /?Action=DescribeSnapshots\r\n\r\n",
                 b"BLAH BLAH BLAH BLAH\r\n\r\n",
                 b"\r\n\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
                 b"GET /?Action=DescribeSnapshots HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 300000 +
                 b"\r\n\r\n",
                 b"GET /?Action=DescribeSnapshots HTTP/1.1\r\n",  # cut short
                 os.urandom(4096)]
        for raw in cases:
            with self.subTest(raw=raw[:60]):
                try:
                    out = harness.raw_exchange(self.d.sock, raw)
                except (BrokenPipeError, ConnectionResetError):
                    out = b""
                if out:
                    status = out.split(b"\r\n", 1)[0]
                    self.assertRegex(status, rb"^HTTP/1\.[01] (400|413|431|505) ", out[:300])
                self.assertIsNone(self.d.proc.poll(), "dsnapd died on %r" % raw[:60])
                self.assertOk(self.call("DescribeSnapshots"))

    def test_request_ids_fresh(self):
        seen = set()
        for i in range(30):
            a = self.call("DescribeSnapshots") if i % 2 else self.call("NoSuchAction")
            self.check_request_id(a)
            self.assertNotIn(a.json["RequestId"], seen)
            seen.add(a.json["RequestId"])

    def test_curl(self):
        curl = shutil.which("curl")
        if not curl:
            self.skipTest("curl is not installed (scripts/deps.sh installs it)")
        disk, _ = self.new_disk()
        out = subprocess.run([curl, "-s", "--unix-socket", self.d.sock,
                              "http://localhost/?Action=CreateSnapshot&DiskId=" + disk],
                             capture_output=True, timeout=30, check=True).stdout
        j = json.loads(out)
        self.assertEqual(list(j), ["RequestId", "SnapshotId"], out)
        self.assertRegex(j["RequestId"], harness.UUID_RE)
        self.assertRegex(j["SnapshotId"], r"^s-[a-z0-9]{20}$")
        self.wait_snapshot(j["SnapshotId"])
        # The documentation's line, with a name and a tag.
        out = subprocess.run([curl, "-s", "--unix-socket", self.d.sock,
                              "http://localhost/?Action=CreateSnapshot&DiskId=%s&SnapshotName="
                              "nightly&Tag.1.Key=env&Tag.1.Value=dev" % disk],
                             capture_output=True, timeout=30, check=True).stdout
        sid = json.loads(out)["SnapshotId"]
        s = self.wait_snapshot(sid)
        self.assertEqual(s["SnapshotName"], "nightly")
        self.assertEqual(s["Tags"]["Tag"], [{"TagKey": "env", "TagValue": "dev"}])
        r = subprocess.run([curl, "-s", "-w", "\n%{http_code}", "--unix-socket", self.d.sock,
                            "http://localhost/?Action=CreateSnapshot&DiskId=d-nope"],
                           capture_output=True, timeout=30, check=True).stdout.decode()
        body, code = r.rsplit("\n", 1)
        self.assertEqual(code, "404")
        self.assertEqual(json.loads(body)["Code"], "InvalidDiskId.NotFound")


def xml_to_obj(el):
    """An element's children as a dict (repeated names -> list), or its text."""
    kids = list(el)
    if not kids:
        return el.text or ""
    out = {}
    for k in kids:
        v = xml_to_obj(k)
        if k.tag in out:
            if not isinstance(out[k.tag], list):
                out[k.tag] = [out[k.tag]]
            out[k.tag].append(v)
        else:
            out[k.tag] = v
    return out


def json_as_xml_text(v):
    """What a JSON value becomes as XML text."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return {k: json_as_xml_text(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_as_xml_text(x) for x in v]
    return str(v)


class XmlFormat(ApiTest):

    def xml(self, a, root):
        self.assertTrue(a.headers.get("Content-Type", "").startswith("application/xml"), a.headers)
        el = ET.fromstring(a.body)
        self.assertEqual(el.tag, root, a)
        rid = el.findtext("RequestId")
        self.assertRegex(rid or "", harness.UUID_RE)
        return el

    def test_create_snapshot(self):
        disk, _ = self.new_disk()
        a = self.call("CreateSnapshot", {"DiskId": disk, "Format": "XML"})
        self.assertEqual(a.status, 200, a)
        el = self.xml(a, "CreateSnapshotResponse")
        self.assertEqual([c.tag for c in el], ["RequestId", "SnapshotId"])
        sid = el.findtext("SnapshotId")
        self.assertRegex(sid, harness.SNAP_ID_RE)
        self.wait_snapshot(sid)

    def test_describe_snapshots(self):
        disk, _ = self.new_disk()
        sids = [self.create_snapshot(disk, {"SnapshotName": "x%d" % i, "Description": "a<b>&\"c'",
                                            "Tag.1.Key": "env", "Tag.1.Value": "dev & <test>",
                                            "Tag.2.Key": "n", "Tag.2.Value": str(i)})
                for i in range(3)]
        j = self.describe({"DiskId": disk})
        a = self.call("DescribeSnapshots", {"DiskId": disk, "Format": "XML"})
        self.assertEqual(a.status, 200, a)
        el = self.xml(a, "DescribeSnapshotsResponse")
        self.assertEqual(el.findtext("TotalCount"), "3")
        snaps = el.findall("./Snapshots/Snapshot")
        self.assertEqual(len(snaps), 3, a.body)
        self.assertEqual([s.findtext("SnapshotId") for s in snaps], sids)
        for s in snaps:
            tags = s.findall("./Tags/Tag")
            self.assertEqual(len(tags), 2)
            self.assertEqual(tags[0].findtext("TagKey"), "env")
            self.assertEqual(tags[0].findtext("TagValue"), "dev & <test>")
            self.assertEqual(s.findtext("Description"), "a<b>&\"c'")
        # Field by field the same as the JSON answer (but the RequestId).
        got = xml_to_obj(el)
        want = json_as_xml_text(j)
        for d in (got, want):
            d.pop("RequestId")
        self.assertEqual(got, want)
        # An empty list still parses.
        a = self.call("DescribeSnapshots", {"DiskId": "d-none", "Format": "XML"})
        el = self.xml(a, "DescribeSnapshotsResponse")
        self.assertEqual(el.findtext("TotalCount"), "0")
        self.assertEqual(el.findall("./Snapshots/Snapshot"), [])

    def test_error(self):
        for params, code in [({"DiskId": "d-doesnotexist00000000"}, "InvalidDiskId.NotFound"),
                             ({"DiskId": "d-x", "SnapshotName": "1"},
                              "InvalidSnapshotName.Malformed"),
                             ({"DiskId": "d-x", "Description": "http://x"},
                              "InvalidDescription.Malformed")]:
            ja = self.call("CreateSnapshot", params)
            self.assertError(ja, code)
            a = self.call("CreateSnapshot", dict(params, Format="XML"))
            self.assertEqual(a.status, ja.status, a)
            el = self.xml(a, "Error")
            self.assertEqual([c.tag for c in el], ["RequestId", "HostId", "Code", "Message"])
            self.assertEqual(el.findtext("Code"), code)
            self.assertEqual(el.findtext("Message"), ja.json["Message"])
            self.assertEqual(el.findtext("HostId"), ja.json["HostId"])
            self.assertNotEqual(el.findtext("RequestId"), ja.json["RequestId"])
        # An error found before the action is known is XML too.
        a = self.d.req({"Action": "NoSuchAction", "Format": "XML"})
        self.assertEqual(self.xml(a, "Error").findtext("Code"), "InvalidAction.NotFound")


class Throttle(ApiTest):
    CONFIG = {"throttle_rate": 2, "throttle_burst": 2, "throttle_root": "yes"}

    def test_throttling(self):
        disk, _ = self.new_disk()
        time.sleep(1.1)  # a full bucket
        answers = [self.call("DescribeSnapshots") for _ in range(8)]
        self.assertOk(answers[0])
        self.assertOk(answers[1])
        throttled = [a for a in answers if a.status != 200]
        self.assertGreaterEqual(len(throttled), 4, answers)
        for a in throttled:
            self.assertError(a, "Throttling")
        # A throttled CreateSnapshot creates nothing.
        a = self.call("CreateSnapshot", {"DiskId": disk})
        self.assertError(a, "Throttling")
        time.sleep(1.1)
        j = self.assertOk(self.call("DescribeSnapshots", {"DiskId": disk}))
        self.assertEqual(j["TotalCount"], 0)
        # The bucket refills at the configured rate.
        time.sleep(1.1)
        self.assertOk(self.call("DescribeSnapshots"))


class Config(unittest.TestCase):
    """dsnapd refuses a config file with a bad value, and says which."""

    def start_with(self, config):
        tmp = harness.make_tmpdir()
        self.addCleanup(harness.remove_tmpdir, tmp)
        d = harness.Daemon(tmp, config)
        try:
            d.start(timeout=10)
        except AssertionError:
            d.kill()
            return None, d.log()
        d.stop_checked(self)
        return d, d.log()

    def test_rates(self):
        for key, val in [("copy_busy_rate", "0"), ("copy_busy_rate", "-8"),
                         ("copy_busy_rate", "16x"), ("copy_max_rate", "-1")]:
            d, log = self.start_with({key: val})
            self.assertIsNone(d, "%s = %s was accepted" % (key, val))
            self.assertIn("bad value for %s: '%s'" % (key, val), log)
        d, _ = self.start_with({"copy_busy_rate": "16", "copy_max_rate": "0"})
        self.assertIsNotNone(d)


if __name__ == "__main__":
    harness.main()
