# -*- test-case-name: tests.test_torture -*-
"""
The fast parts of the torture suite (bench/torture.py has the full-size
run against a real server): hostile input, isolation between users and
abuse limits, through the whole HTTP stack (Site, cred, throttle,
dispatcher, commands) on memory backends and a Clock.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from directpush import auth, throttle, wbxml, web
from directpush.backends.memory import MemoryBackend
from directpush.model import FolderType
from directpush.protocol.commands import makeDispatcher
from directpush.protocol.core import Policy, Services
from directpush.push import PushHub
from directpush.state.memory import MemoryStateStore
from directpush.wbxml import E

from . import hostile
from .phone import Phone, Transport
from .test_commands import NOW, FakeDirectory, FakeSubmission, message
from .util import runNow

A, B, M = "alice@example.org", "bob@example.org", "mallory@example.org"
PASSWORDS = {A: "alice-pw", B: "bob-pw", M: "mallory-pw"}
MAX_BODY = 64 * 1024
SECRET = "SECRET-B"


class World:
    """
    The server (memory backends) behind a Site, three users with mail and
    a provisioned device each.
    """

    def __init__(self, case: SynchronousTestCase, limits: throttle.Limits = throttle.UNLIMITED) -> None:
        self.case = case
        self.clock = Clock()
        self.clock.advance(NOW)
        self.backend = MemoryBackend(self.clock)
        self.store = MemoryStateStore()
        self.hub = PushHub(self.clock, self.backend)
        services = Services(
            self.backend, self.store, self.clock, submission=FakeSubmission(self.backend),
            directory=FakeDirectory(), policy=Policy.PERMISSIVE, domain="example.org", hub=self.hub,
        )
        self.calls: List[str] = []
        dispatcher = makeDispatcher(services)
        calls = self.calls

        class Recording:
            optionsHeaders = dispatcher.optionsHeaders

            async def begin(self, query: bytes, header: Any, user: str, body: bytes) -> Any:
                calls.append(user)
                return await dispatcher.begin(query, header, user, body)

        self.throttle = throttle.Throttle(Recording(), limits, self.clock)  # type: ignore[arg-type]
        path = FilePath(case.mktemp())
        auth.writePasswd(path, {u: "{PLAIN}" + p for u, p in PASSWORDS.items()})
        checker = auth.PasswdChecker(auth.PasswdFile(path), runNow, self.clock)
        portal = Portal(auth.Realm(web.makeUserResource(self.throttle, MAX_BODY)), [checker])
        self.guard = throttle.ConnectionGuard(limits, self.clock)
        self.site = web.buildSite(portal, self.clock, maxBody=MAX_BODY, guard=self.guard)
        self.connections: List[Tuple[Any, StringTransport]] = []

    def closeLost(self) -> None:
        """
        StringTransport never reports the end of a connection the server
        closed: do it, as a real transport would.
        """
        still = []
        for proto, transport in self.connections:
            if transport.disconnecting:
                proto.connectionLost(Failure(ConnectionDone()))
            else:
                still.append((proto, transport))
        self.connections = still

    def advance(self, seconds: float, steps: int = 1) -> None:
        for _ in range(steps):
            self.clock.advance(seconds / steps)
            self.closeLost()

    def mailbox(self, user: str) -> Any:
        return self.case.successResultOf(self.backend.mailbox(user))

    def folderId(self, user: str, kind: FolderType) -> str:
        folders = self.case.successResultOf(self.mailbox(user).folders())
        return next(f.id for f in folders if f.type == kind)

    def deliver(self, user: str, count: int, marker: str) -> None:
        box = self.mailbox(user)
        inbox = self.folderId(user, FolderType.INBOX)
        for n in range(count):
            raw = message(f"{marker} {n}", body=f"{marker} body {n}", attachment=(f"{marker}.bin", marker.encode() * 10))
            self.case.successResultOf(box.append(inbox, raw))

    def snapshot(self, user: str) -> Dict[str, Any]:
        """
        Every folder of C{user} with its messages' uids and flags.
        """
        box = self.mailbox(user)
        out = {}
        for folder in self.case.successResultOf(box.folders()):
            infos = self.case.successResultOf(box.messages(folder.id))
            out[f"{folder.id}:{folder.name}:{folder.parentId}"] = sorted((i.uid, tuple(sorted(map(str, i.flags)))) for i in infos)
        return out

    def send(self, raw: bytes, host: str = "10.0.0.1") -> Tuple[List[Tuple[int, Dict[str, str], bytes]], StringTransport]:
        address = IPv4Address("TCP", host, 40000)
        proto = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        proto.makeConnection(transport)
        proto.dataReceived(raw)
        self.connections.append((proto, transport))
        self.closeLost()
        return list(hostile.parseResponses(transport.value())), transport

    def transport(self, user: str) -> Transport:
        """
        A L{Phone} transport through the Site, as C{user}.
        """

        async def send(query: bytes, headers: Dict[str, str], body: bytes) -> Tuple[int, Optional[str], bytes]:
            target = hostile.Target(user, PASSWORDS[user])
            extra = [(k.encode(), v.encode()) for k, v in headers.items() if k not in ("Content-Type", "MS-ASProtocolVersion")]
            raw = hostile.request(target, query, body, headers.get("Content-Type"), headers=extra,
                                  version=headers["MS-ASProtocolVersion"].encode())
            [(code, h, data)], _ = self.send(raw)
            return code, h.get("content-type"), data

        return send

    def phone(self, user: str, deviceId: str) -> Phone:
        phone = Phone(self.transport(user), deviceId=deviceId)
        self.drive(phone.provision())
        self.drive(phone.folderSync())
        self.drive(phone.syncAll(phone.folderOfType(2)))
        return phone

    def drive(self, coroutine: Any) -> Any:
        return self.case.successResultOf(Deferred.fromCoroutine(coroutine))


def failures(logs: List[dict]) -> List[dict]:
    return [e for e in logs if "log_failure" in e or "Unhandled" in str(e.get("log_format", ""))]


class HostileInputTests(SynchronousTestCase):
    """
    Group 2, CI-sized: thousands of seeded hostile requests.
    """

    count = 2600

    def test_hostile(self) -> None:
        """
        Every hostile request gets a clear protocol status or a 4xx (501
        for commands not implemented), never a 500 or a traceback; nothing
        is logged as a failure; the users' mail and devices are intact.
        """
        world = World(self)
        world.deliver(A, 5, "alice")
        world.deliver(M, 5, "mallory")
        alice = world.phone(A, "alicephone")
        before = world.snapshot(A)
        mallory = world.phone(M, "hostile1")
        inbox = world.folderId(M, FolderType.INBOX)
        target = hostile.Target(M, PASSWORDS[M], "hostile1", mallory.policyKey, tuple(mallory.folders),
                                tuple(mallory.collections[inbox].items), MAX_BODY)
        bad: List[Tuple[str, Any]] = []
        counts: Dict[str, int] = {}
        with capturedLogs() as logs:
            cases = list(hostile.generate(target, 7, self.count))
            pending = []
            for case in cases:
                answers, transport = world.send(case.raw)
                if not answers:
                    pending.append((case, transport))
                for code, headers, body in answers[:1]:
                    verdict = hostile.judge(code, headers, body)
                    counts[str(code)] = counts.get(str(code), 0) + 1
                    if not verdict.ok:
                        bad.append((case.category, verdict, case.raw[:200]))
            # Waiting Pings and Syncs end with their heartbeat; requests
            # that never complete meet the receive deadline.
            world.advance(4000, 40)
            for case, transport in pending:
                answers = list(hostile.parseResponses(transport.value()))
                if answers:
                    verdict = hostile.judge(*answers[0])
                    counts[str(answers[0][0])] = counts.get(str(answers[0][0]), 0) + 1
                    if not verdict.ok:
                        bad.append((case.category, verdict, case.raw[:200]))
                elif not transport.disconnecting:
                    bad.append((case.category, "no answer", case.raw[:200]))
        self.maxDiff = None
        self.assertEqual(bad, [])
        self.assertEqual(failures(logs), [])
        self.assertGreater(counts.get("400", 0), self.count // 4)
        self.assertEqual(world.snapshot(A), before)
        self.assertEqual(world.drive(alice.sync(alice.folderOfType(2))), {})
        # Mallory's own server state still works: a new device sees
        # exactly what the mailbox holds.
        fresh = world.phone(M, "afterwards")
        listing = self.successResultOf(world.mailbox(M).messages(inbox))
        self.assertEqual(sorted(fresh.collections[inbox].items), sorted(f"{inbox}:{i.uid}" for i in listing))


class IsolationTests(SynchronousTestCase):
    """
    Group 3: A reaches for B's mail every way the suite knows.
    """

    def setUp(self) -> None:
        self.world = w = World(self)
        w.deliver(A, 3, "alice")
        w.deliver(B, 12, SECRET)
        for name in ("SecretB1", "SecretB2", "SecretB3"):
            self.successResultOf(w.mailbox(B).createFolder(None, name))
        self.alice = w.phone(A, "alicephone")
        self.bob = w.phone(B, "bobphone")
        inboxA = w.folderId(A, FolderType.INBOX)
        inboxB = w.folderId(B, FolderType.INBOX)
        foldersA = set(self.alice.folders)
        onlyB = tuple(f for f in self.bob.folders if f not in foldersA)
        itemsA = set(self.alice.collections[inboxA].items)
        onlyBItems = tuple(i for i in self.bob.collections[inboxB].items if i not in itemsA)
        self.assertTrue(onlyB and onlyBItems)
        self.a = hostile.Target(A, PASSWORDS[A], "alicephone", self.alice.policyKey, tuple(sorted(foldersA)),
                                tuple(sorted(itemsA)), MAX_BODY)
        self.b = hostile.Victim(B, "bobphone", self.bob.policyKey, onlyB, onlyBItems)

    def test_isolation(self) -> None:
        """
        No answer to A carries B's mail or folders; B's mailbox and
        device state are unchanged; every attempt is logged.
        """
        w = self.world
        before = w.snapshot(B)
        bad = []
        unlogged = []
        attempts = list(hostile.isolationAttempts(self.a, self.b))
        for label, raw in attempts:
            with capturedLogs() as logs:
                answers, transport = w.send(raw)
                if not answers:
                    w.advance(3600)
                    answers = list(hostile.parseResponses(transport.value()))
            self.assertEqual(failures(logs), [], label)
            if not answers:
                bad.append((label, "no answer"))
                continue
            code, headers, body = answers[0]
            verdict = hostile.judge(code, headers, body)
            if not verdict.ok or SECRET.encode() in body or b"SecretB" in body:
                bad.append((label, code, body[:300]))
            if not [e for e in logs if e.get("log_namespace", "").startswith("directpush")]:
                unlogged.append(label)
        self.maxDiff = None
        self.assertEqual(bad, [])
        self.maxDiff = None
        self.assertEqual(unlogged, [])
        self.assertEqual(w.snapshot(B), before)
        # B's device carries on where it was: same keys, nothing new.
        self.assertEqual(w.drive(self.bob.sync(self.bob.folderOfType(2))), {})
        self.assertEqual(w.drive(self.bob.folderSync()).findtext("Status"), "1")
        self.assertGreater(len(attempts), 400)

    def test_unauthenticated(self) -> None:
        """
        Requests without valid credentials get 401 and reach no handler.
        """
        w = self.world
        del w.calls[:]
        codes = set()
        for label, raw in hostile.unauthenticatedAttempts(self.a, self.b):
            answers, _ = w.send(raw)
            self.assertEqual(len(answers), 1, label)
            codes.add(answers[0][0])
            self.assertNotIn(SECRET.encode(), answers[0][2])
        self.assertEqual(codes, {401})
        self.assertEqual(w.calls, [])


class AbuseTests(SynchronousTestCase):
    """
    Group 4 with the default limits (or small ones) on a Clock.
    """

    def test_tightLoops(self) -> None:
        """
        A device re-Syncing and another re-Pinging in tight loops get 503
        with Retry-After after their burst; B is served all along.
        """
        w = World(self, throttle.Limits())
        w.deliver(A, 2, "alice")
        w.deliver(B, 2, "bob")
        bob = w.phone(B, "bobphone")
        alice = w.phone(A, "alicephone")
        inbox = alice.folderOfType(2)
        target = hostile.Target(A, PASSWORDS[A], "alicephone", alice.policyKey)
        document = E("AirSync:Sync", E("Collections", alice.collectionRequest(inbox)))
        sync = hostile.request(target, hostile.plainQuery(target, "Sync"), wbxml.encode(document))
        codes: Dict[int, int] = {}
        with capturedLogs() as logs:
            for _ in range(400):
                [(code, headers, _)], _ = w.send(sync)
                codes[code] = codes.get(code, 0) + 1
                if code == 503:
                    self.assertIn("retry-after", headers)
        self.assertEqual(codes[503] + codes.get(200, 0), 400)
        self.assertGreaterEqual(codes[503], 400 - throttle.Limits().deviceBurst - 1)
        self.assertTrue([e for e in logs if "over the request rate" in e.get("log_format", "")])
        self.assertEqual(w.drive(bob.sync(bob.folderOfType(2))), {})

    def test_manyPings(self) -> None:
        """
        Thousands of Pings from one user's devices: at most userConcurrent
        wait, the rest get 503; B's Ping is answered when B's mail comes.
        """
        limits = throttle.Limits(userConcurrent=20, userBurst=5000, userRate=1000)
        w = World(self, limits)
        alice = w.phone(A, "alicephone")
        bob = w.phone(B, "bobphone")
        inboxA, inboxB = alice.folderOfType(2), bob.folderOfType(2)
        ping = wbxml.encode(E("Ping:Ping", E("HeartbeatInterval", "600"), E("Folders", E(
            "Folder", E("Id", inboxA), E("Class", "Email")))))
        codes: Dict[int, int] = {}
        for n in range(2000):
            target = hostile.Target(A, PASSWORDS[A], f"dev{n}", alice.policyKey)
            answers, _ = w.send(hostile.request(target, hostile.plainQuery(target, "Ping"), ping))
            code = answers[0][0] if answers else 0
            codes[code] = codes.get(code, 0) + 1
        # Devices dev0.. are not provisioned: they are refused by status at
        # once, so none waits; then provisioned waits, with alice's device.
        self.assertNotIn(500, codes)
        target = hostile.Target(A, PASSWORDS[A], "alicephone", alice.policyKey)
        waiting = []
        for n in range(50):
            answers, transport = w.send(hostile.request(target, hostile.plainQuery(target, "Ping"), ping), host=f"10.0.1.{n}")
            waiting.append((answers, transport))
        # One device: each new Ping supersedes the last, so at most one waits.
        self.assertLessEqual(w.throttle.inProgress(A), 1)
        bobPing = hostile.Target(B, PASSWORDS[B], "bobphone", bob.policyKey)
        bobBody = wbxml.encode(E("Ping:Ping", E("HeartbeatInterval", "600"), E("Folders", E(
            "Folder", E("Id", inboxB), E("Class", "Email")))))
        answers, transport = w.send(hostile.request(bobPing, hostile.plainQuery(bobPing, "Ping"), bobBody), host="10.0.2.1")
        self.assertEqual(answers, [])
        w.deliver(B, 1, "news")
        w.clock.advance(1)
        [(code, _, body)] = list(hostile.parseResponses(transport.value()))
        self.assertEqual(code, 200)
        self.assertEqual(wbxml.decode(body).findtext("Status"), "2")

    def test_concurrentWaits(self) -> None:
        """
        Many provisioned devices of one user each holding a Ping: beyond
        userConcurrent they get 503 with Retry-After, and B is served.
        """
        limits = throttle.Limits(userConcurrent=10)
        w = World(self, limits)
        bob = w.phone(B, "bobphone")
        phones = [w.phone(A, f"a{n}") for n in range(14)]
        codes = []
        for n, phone in enumerate(phones):
            target = hostile.Target(A, PASSWORDS[A], phone.deviceId, phone.policyKey)
            body = wbxml.encode(E("Ping:Ping", E("HeartbeatInterval", "600"), E("Folders", E(
                "Folder", E("Id", phone.folderOfType(2)), E("Class", "Email")))))
            answers, _ = w.send(hostile.request(target, hostile.plainQuery(target, "Ping"), body))
            codes.append(answers[0][0] if answers else "waiting")
            if answers:
                self.assertEqual(answers[0][1]["retry-after"], "10")
        self.assertEqual(codes, ["waiting"] * 10 + [503] * 4)
        self.assertEqual(w.drive(bob.sync(bob.folderOfType(2))), {})
        w.clock.advance(700)
        self.assertEqual(w.throttle.inProgress(A), 0)
