# -*- test-case-name: tests.test_dispatch -*-
"""
Tests for L{directpush.protocol.dispatch}.
"""

from __future__ import annotations

from typing import List, Optional

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from directpush import wbxml
from directpush.protocol.dispatch import Dispatcher, Response, wbxmlResponse
from directpush.protocol.request import EASRequest

HEADERS = {
    "ms-asprotocolversion": "14.1",
    "content-type": "application/vnd.ms-sync.wbxml",
}
PING = b"Cmd=Ping&User=bob&DeviceId=dev1&DeviceType=iPhone"


def header(name: str) -> Optional[str]:
    return HEADERS.get(name.lower())


class DispatcherTests(SynchronousTestCase):
    """
    Requests reach the handler of their command, or get 400/501.
    """

    def setUp(self) -> None:
        self.calls: List[tuple] = []

        async def ping(request: EASRequest, document, body: bytes) -> Response:
            self.calls.append((request, document, body))
            return wbxmlResponse(wbxml.E("Ping:Ping", wbxml.E("Status", "1")))

        self.dispatcher = Dispatcher({"Ping": ping})

    def dispatch(self, query: bytes, body: bytes = b"", user: str = "alice") -> Response:
        return self.successResultOf(self.dispatcher.dispatch(query, header, user, body))

    def test_options(self) -> None:
        """
        OPTIONS lists the versions and exactly the registered commands.
        """
        self.assertEqual(
            dict(self.dispatcher.optionsHeaders()),
            {"MS-ASProtocolVersions": "12.1,14.0,14.1,16.0,16.1", "MS-ASProtocolCommands": "Ping"},
        )
        self.assertEqual(dict(Dispatcher().optionsHeaders())["MS-ASProtocolCommands"], "")

    def test_reachesHandler(self) -> None:
        """
        The handler gets the parsed request for the authenticated user and
        the decoded document.
        """
        body = wbxml.encode(wbxml.E("Ping:Ping", wbxml.E("HeartbeatInterval", "480")))
        response = self.dispatch(PING, body)
        self.assertEqual(response.code, 200)
        self.assertEqual(wbxml.decode(response.body).findtext("Status"), "1")
        [(request, document, raw)] = self.calls
        self.assertEqual((request.user, request.queryUser), ("alice", "bob"))
        self.assertEqual(document.findtext("HeartbeatInterval"), "480")
        self.assertEqual(raw, body)

    def test_emptyBody(self) -> None:
        """
        An empty body reaches the handler as no document (an empty Ping).
        """
        self.assertEqual(self.dispatch(PING).code, 200)
        self.assertIsNone(self.calls[0][1])

    def test_notImplemented(self) -> None:
        """
        A known command without a handler is 501 and logged.
        """
        with capturedLogs() as events:
            response = self.dispatch(b"Cmd=Sync&DeviceId=d&DeviceType=t")
        self.assertEqual(response.code, 501)
        self.assertIn(b"Sync is not implemented", response.body)
        self.assertEqual(events[0]["command"], "Sync")

    def test_badQuery(self) -> None:
        """
        An unknown command or a malformed query is 400 and logged as a
        warning; the handler is not called.
        """
        for query in (b"Cmd=Frob&DeviceId=d&DeviceType=t", b"%%%", b"Cmd=Ping&DeviceId=a/b&DeviceType=t"):
            with capturedLogs() as events:
                self.assertEqual(self.dispatch(query).code, 400)
            self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertEqual(self.calls, [])

    def test_malformedWBXML(self) -> None:
        """
        Undecodable WBXML is 400 naming the offset; the handler is not called.
        """
        with capturedLogs() as events:
            response = self.dispatch(PING, b"\x03\x01\x6a\x00\x45")
        self.assertEqual(response.code, 400)
        self.assertIn(b"at byte 5", response.body)
        self.assertEqual(events[0]["device"], "dev1")
        self.assertEqual(self.calls, [])


class AuditTests(SynchronousTestCase):
    """
    Regression (torture suite): requests naming another user, or ids the
    device was never given, left no trace in the log.
    """

    def setUp(self) -> None:
        async def handler(request: EASRequest, document, body: bytes) -> Response:
            status = {"dev-missing": "6", "dev-moved": "3", "dev-push": "2"}.get(request.deviceId, "1")
            root = "Move:MoveItems" if request.command == "MoveItems" else f"{request.command}:{request.command}"
            if request.command == "ItemOperations":
                root = "ItemOperations:ItemOperations"
            return wbxmlResponse(wbxml.E(root, wbxml.E("Status", status)))

        self.dispatcher = Dispatcher({"Ping": handler, "MoveItems": handler, "ItemOperations": handler})

    def logged(self, query: bytes, user: str = "alice") -> List[str]:
        with capturedLogs() as events:
            self.successResultOf(self.dispatcher.dispatch(query, header, user, b""))
        return [e["log_format"] for e in events]

    def test_otherUser(self) -> None:
        """
        A User parameter naming someone else is logged; the user's own
        name, local part or DOMAIN\\name is not.
        """
        q = b"Cmd=Ping&User=%s&DeviceId=dev1&DeviceType=iPhone"
        self.assertEqual(len(self.logged(q % b"bob@example.org", "alice@example.org")), 1)
        for own in (b"alice@example.org", b"ALICE", b"EXAMPLE%5Calice", b""):
            self.assertEqual(self.logged(q % own, "alice@example.org"), [], own)

    def test_refusalStatus(self) -> None:
        """
        A protocol status that refuses is logged with the device; success
        statuses (1; Ping 2; MoveItems 3) are not.
        """
        q = b"Cmd=%s&User=alice&DeviceId=%s&DeviceType=iPhone"
        [line] = self.logged(q % (b"ItemOperations", b"dev-missing"))
        self.assertIn("refused with status", line)
        self.assertEqual(self.logged(q % (b"ItemOperations", b"dev1")), [])
        self.assertEqual(self.logged(q % (b"Ping", b"dev-push")), [])
        self.assertEqual(self.logged(q % (b"MoveItems", b"dev-moved")), [])
        self.assertEqual(len(self.logged(q % (b"MoveItems", b"dev1"))), 1)
