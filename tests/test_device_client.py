"""
The reference device's answers to Ping statuses other than 1 and 2, and
the push tester's options, against a scripted transport.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from directpush import wbxml
from directpush.device.__main__ import Options
from directpush.device.client import WBXML_TYPE, Device
from directpush.device.heartbeat import Heartbeat
from directpush.wbxml import E


def folderSyncAnswer(key: str) -> wbxml.Element:
    return E(
        "FolderHierarchy:FolderSync",
        E("Status", "1"),
        E("SyncKey", key),
        E("Changes", E("Count", "1"), E("Add", E("ServerId", "5"), E("ParentId", "0"), E("DisplayName", "Inbox"), E("Type", "2"))),
    )


class ScriptedServer:
    """
    Answers commands from a list of canned WBXML documents per command.
    """

    def __init__(self, answers: Dict[str, List[Any]]) -> None:
        self.answers = answers
        self.seen: List[Tuple[str, Any]] = []

    def request(self, method: bytes, query: str, headers: Dict[str, str], body: bytes) -> "defer.Deferred[Any]":
        command = query.split("&")[0].split("=")[1] if query else method.decode()
        self.seen.append((command, wbxml.decode(body) if body else None))
        queue = self.answers.get(command)
        if not queue:
            return defer.Deferred()  # never answers
        answer = queue.pop(0)
        return defer.succeed((200, WBXML_TYPE, wbxml.encode(answer)))


class StatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: List[Dict[str, Any]] = []

    def device(self, server: ScriptedServer) -> Device:
        device = Device(server.request, self.clock, Heartbeat.create(900, 480, 1800, 240), self.events.append)
        device.folders["5"] = ("Inbox", 2)
        return device

    def test_status5AdoptsBound(self) -> None:
        """
        Status 5 with a HeartbeatInterval: the device adopts the bound and
        says so.
        """
        server = ScriptedServer({"Ping": [E("Ping:Ping", E("Status", "5"), E("HeartbeatInterval", "600"))]})
        device = self.device(server)
        self.successResultOf(defer.Deferred.fromCoroutine(device.pingOnce()))
        self.assertEqual(self.events, [{"event": "ping", "heartbeat": 900}, {"event": "heartbeat-bound", "heartbeat": 600}])
        self.assertEqual(device.heartbeat.current, 600)

    def test_status7RunsFolderSync(self) -> None:
        """
        Status 7: the hierarchy changed, so the device runs FolderSync.
        """
        server = ScriptedServer(
            {"Ping": [E("Ping:Ping", E("Status", "7"))], "FolderSync": [folderSyncAnswer("2")]}
        )
        device = self.device(server)
        self.successResultOf(defer.Deferred.fromCoroutine(device.pingOnce()))
        self.assertEqual([c for c, _ in server.seen], ["Ping", "FolderSync"])
        self.assertEqual(device.hierarchyKey, "2")
        self.assertIn({"event": "hierarchy-changed"}, self.events)

    def test_unansweredPingIsADrop(self) -> None:
        """
        No answer by heartbeat + grace: the request is cancelled and the
        heartbeat machine hears of a drop.
        """
        device = self.device(ScriptedServer({}))
        d = defer.Deferred.fromCoroutine(device.pingOnce())
        self.clock.advance(900 + 29)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(self.events[-1], {"event": "network-drop", "heartbeat": 900})
        self.assertEqual(device.heartbeat.current, 480)

    def test_pingNamesWatchedFolders(self) -> None:
        """
        The Ping carries the heartbeat and the watched folders.
        """
        server = ScriptedServer({"Ping": [E("Ping:Ping", E("Status", "1"))]})
        device = self.device(server)
        self.successResultOf(defer.Deferred.fromCoroutine(device.pingOnce()))
        [(_, ping)] = server.seen
        self.assertEqual(ping.findtext("HeartbeatInterval"), "900")
        self.assertEqual([f.findtext("Id") for f in ping.findall("Folders/Folder")], ["5"])
        self.assertEqual(device.heartbeat.current, 1140)

    def test_provisionWithoutPolicy(self) -> None:
        """
        A server with no policy (Status 2) lets the device go on unkeyed.
        """
        answer = E(
            "Provision:Provision",
            E("Status", "1"),
            E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"), E("Status", "2"))),
        )
        device = self.device(ScriptedServer({"Provision": [answer]}))
        self.successResultOf(defer.Deferred.fromCoroutine(device.provision()))
        self.assertIsNone(device.policyKey)


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """
        The seed's settings by default: 15 min start, 8 min floor, 4 min step.
        """
        options = self.parse("--server", "mail.example.org:443", "--user", "a")
        self.assertEqual((options["host"], options["port"]), ("mail.example.org", 443))
        self.assertEqual(
            [options[n] for n in ("initial-heartbeat", "min-heartbeat", "heartbeat-step")], [900, 480, 240]
        )

    def test_refusals(self) -> None:
        """
        Missing or malformed options are refused.
        """
        for args in (
            ["--user", "a"],
            ["--server", "nohost", "--user", "a"],
            ["--server", "h:1", "--user", "a", "--insecure", "--ca-file", "x"],
            ["--server", "h:1", "--user", "a", "--min-heartbeat", "900", "--max-heartbeat", "600"],
            ["--server", "h:1", "--user", "a", "--carrier-idle-timeout", "-3"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)
