# -*- test-case-name: tests.test_request -*-
"""
Tests for L{directpush.protocol.request}: both query forms of MS-ASHTTP.
"""

from __future__ import annotations

import base64
import struct
from typing import Dict, Optional

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from directpush.protocol.request import BadRequest, EASRequest, parseRequest


def headers(**values: str):
    table: Dict[str, str] = {k.replace("_", "-").lower(): v for k, v in values.items()}
    return lambda name: table.get(name.lower())


V141 = headers(MS_ASProtocolVersion="14.1")


def blob(
    version: int = 141,
    code: int = 0,
    deviceId: bytes = b"dev1",
    policyKey: Optional[int] = None,
    deviceType: bytes = b"iPhone",
    params: bytes = b"",
) -> bytes:
    raw = bytes([version, code]) + struct.pack("<H", 1033)
    raw += bytes([len(deviceId)]) + deviceId
    raw += b"\x00" if policyKey is None else b"\x04" + struct.pack("<I", policyKey)
    raw += bytes([len(deviceType)]) + deviceType + params
    return base64.b64encode(raw)


class PlainQueryTests(SynchronousTestCase):
    """
    C{Cmd=…&User=…&DeviceId=…&DeviceType=…} with version and policy key
    in headers.
    """

    def test_parse(self) -> None:
        """
        Every field lands in the request; the user is the authenticated one.
        """
        request = parseRequest(
            b"Cmd=SmartReply&User=mallory&DeviceId=ABC-123&DeviceType=iPhone"
            b"&CollectionId=5&ItemId=5%3A7&SaveInSent=T",
            headers(MS_ASProtocolVersion="12.1", X_MS_PolicyKey="3942919513"),
            "alice@example.org",
        )
        self.assertEqual(
            request,
            EASRequest(
                command="SmartReply",
                user="alice@example.org",
                deviceId="ABC-123",
                deviceType="iPhone",
                version="12.1",
                policyKey=3942919513,
                queryUser="mallory",
                parameters={"CollectionId": "5", "ItemId": "5:7", "SaveInSent": "T"},
            ),
        )

    def test_rejects(self) -> None:
        """
        Missing or malformed fields are a L{BadRequest}, each with a reason.
        """
        good = b"Cmd=Sync&DeviceId=a1&DeviceType=iPhone"
        for query, hdrs, words in [
            (b"DeviceId=a1&DeviceType=iPhone", V141, "Cmd is missing"),
            (b"Cmd=Sync&DeviceType=iPhone", V141, "DeviceId is missing"),
            (b"Cmd=Sync&DeviceId=a1", V141, "DeviceType is missing"),
            (b"Cmd=Frobnicate&DeviceId=a1&DeviceType=x", V141, "unknown command"),
            (b"Cmd=Sync&DeviceId=a%2F1&DeviceType=iPhone", V141, "DeviceId"),
            (b"Cmd=Sync&DeviceId=" + b"a" * 65 + b"&DeviceType=iPhone", V141, "DeviceId"),
            (b"Cmd=Sync&DeviceId=..&DeviceType=iPhone", V141, "DeviceId"),
            (b"Cmd=Sync&DeviceId=a1&DeviceType=i%00", V141, "DeviceType"),
            (good + b"&Cmd=Ping", V141, "twice"),
            (good + b"&ItemId=" + b"x" * 2000, V141, "too long"),
            (b"Cmd=Sync&DeviceId=a1&DeviceType=iPhone&&", V141, "malformed"),
            (b"Cmd=Sync&DeviceId=%ff&DeviceType=iPhone", V141, "malformed"),
            (good, headers(), "MS-ASProtocolVersion is missing"),
            (good, headers(MS_ASProtocolVersion="2.5"), "not supported"),
            (good, headers(MS_ASProtocolVersion="14.1", X_MS_PolicyKey="-1"), "PolicyKey"),
            (good, headers(MS_ASProtocolVersion="14.1", X_MS_PolicyKey="4294967296"), "PolicyKey"),
        ]:
            e = self.assertRaises(BadRequest, parseRequest, query, hdrs, "u")
            self.assertIn(words, str(e), query)

    def test_emptyPolicyKey(self) -> None:
        """
        An empty X-MS-PolicyKey is no key (iOS sends 0 before provisioning).
        """
        request = parseRequest(
            b"Cmd=Ping&DeviceId=a1&DeviceType=x",
            headers(MS_ASProtocolVersion="14.1", X_MS_PolicyKey=""),
            "u",
        )
        self.assertIsNone(request.policyKey)


class Base64QueryTests(SynchronousTestCase):
    """
    The binary form (12.1+), base64 in the query.
    """

    def test_specExample(self) -> None:
        """
        The MS-ASHTTP example decodes to Sync, 14.0, locale 1033.
        """
        request = parseRequest(b"jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l", headers(), "u")
        self.assertEqual(
            (request.command, request.version, request.locale, request.deviceId, request.deviceType),
            ("Sync", "14.0", 1033, "v140Device", "SmartPhone"),
        )
        self.assertIsNone(request.policyKey)

    def test_allFields(self) -> None:
        """
        Policy key (little-endian), parameters and the Options bits.
        """
        params = b"\x01\x015" + b"\x03\x035:7" + b"\x08\x05eve@x" + b"\x07\x01\x03"
        request = parseRequest(
            blob(161, 3, b"dev-1", 0x01020304, params=params), headers(), "alice"
        )
        self.assertEqual(request.command, "SmartReply")
        self.assertEqual(request.version, "16.1")
        self.assertEqual(request.policyKey, 0x01020304)
        self.assertEqual(request.queryUser, "eve@x")
        self.assertEqual(request.user, "alice")
        self.assertEqual(
            dict(request.parameters), {"CollectionId": "5", "ItemId": "5:7", "SaveInSent": "T"}
        )
        self.assertTrue(request.acceptMultiPart)

    def test_percentEncodedAndUnpadded(self) -> None:
        """
        Clients percent-encode C{+ / =} or drop the padding; both parse.
        """
        raw = blob(deviceId=b"\xfb\xff" * 8)
        self.assertIn(b"+", raw + b"")  # the GUID forces '+' and '/'
        quoted = raw.replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")
        for query in (raw, quoted, raw.rstrip(b"=")):
            self.assertEqual(parseRequest(query, headers(), "u").deviceId, "FBFF" * 8)

    def test_binaryGuid(self) -> None:
        """
        A raw 16-byte GUID becomes its hex spelling.
        """
        guid = bytes(range(16))
        self.assertEqual(parseRequest(blob(deviceId=guid), headers(), "u").deviceId, guid.hex().upper())

    def test_rejects(self) -> None:
        """
        Truncations, unknown codes and bad lengths are L{BadRequest}s.
        """
        full = base64.b64decode(blob(policyKey=7, params=b"\x01\x015"))
        for n in range(len(full)):
            if n in (len(full) - 3,):  # ends cleanly before the parameter
                continue
            self.assertRaises(BadRequest, parseRequest, base64.b64encode(full[:n]), headers(), "u")
        for query in [
            blob(version=25),
            blob(version=130),
            blob(code=5),
            blob(code=255),
            blob(deviceId=b""),
            blob(deviceId=b"a/b"),
            blob(deviceType=b"i P"),
            blob(deviceType=b"\xff"),
            blob(params=b"\x09\x01x"),
            blob(params=b"\x07\x02ab"),
            blob(params=b"\x01\x02\xff\xfe"),
            b"!!!!",
            b"",
        ]:
            self.assertRaises(BadRequest, parseRequest, query, headers(), "u")

    def test_badPolicyKeyLength(self) -> None:
        """
        A policy key is 0 or 4 bytes long.
        """
        raw = bytearray(base64.b64decode(blob()))
        raw[9] = 2  # after version, code, locale, length 4, "dev1"
        self.assertRaises(BadRequest, parseRequest, base64.b64encode(bytes(raw) + b"xx"), headers(), "u")

    @settings(max_examples=1000, deadline=None)
    @given(st.binary(max_size=80))
    def test_anyBlob(self, raw: bytes) -> None:
        """
        Any decoded blob parses or raises BadRequest, nothing else.
        """
        try:
            parseRequest(base64.b64encode(raw), headers(), "u")
        except BadRequest:
            pass

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=80))
    def test_anyQuery(self, query: bytes) -> None:
        """
        Any query bytes parse or raise BadRequest, nothing else.
        """
        try:
            parseRequest(query, V141, "u")
        except BadRequest:
            pass
