# -*- test-case-name: tests.test_ping -*-
"""
Ping and hanging Sync on the push hub, driven by a Clock.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import CancelledError, Deferred, succeed
from zope.interface import implementer

from directpush import wbxml
from directpush.interfaces import IPushHub, ISubmission
from directpush.model import FolderType
from directpush.protocol.commands import makeDispatcher
from directpush.protocol.dispatch import Pending, Response
from directpush.push import PushHub
from directpush.wbxml import E

from .test_commands import USER, CommandTestCase, message
from .util import assertProvides


@implementer(ISubmission)
class LocalSubmission:
    """
    Delivers to the user's own Inbox when addressed, like the real one.
    """

    def __init__(self, case: "PingTestCase") -> None:
        self.case = case

    def submit(self, user: str, sender: str, recipients: Any, raw: bytes, retrySince: Any = None) -> "Deferred[None]":
        if USER in recipients:
            self.case.successResultOf(self.case.mailbox.append(self.case.folderId(FolderType.INBOX), raw))
        return succeed(None)


class PingTestCase(CommandTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.hub = PushHub(self.clock, self.backend)
        self.services.hub = self.hub
        self.services.submission = LocalSubmission(self)
        self.dispatcher = makeDispatcher(self.services)
        self.phone = self.newPhone("phone1")
        self.setUpPhone()
        self.inbox = self.folderId(FolderType.INBOX)
        self.sent = self.folderId(FolderType.SENT)
        self.drive(self.phone.syncAll(self.inbox))

    def pingDocument(self, heartbeat: Optional[str] = "480", folders: Optional[List[str]] = None) -> wbxml.Element:
        document = E("Ping:Ping")
        if heartbeat is not None:
            document.add("HeartbeatInterval", heartbeat)
        if folders is None:
            folders = [self.inbox]
        if folders:
            document.add("Folders", *(E("Folder", E("Id", f), E("Class", "Email")) for f in folders))
        return document

    def startPing(self, phone=None, document: Optional[wbxml.Element] = None, empty: bool = False) -> "Deferred[Any]":
        phone = phone or self.phone
        if not empty and document is None:
            document = self.pingDocument()
        return Deferred.fromCoroutine(phone.call("Ping", None if empty else document))

    def status(self, answer: Optional[wbxml.Element]) -> str:
        assert answer is not None, "a Ping answer is never empty"
        return answer.findtext("Status") or ""

    def assertAllFreed(self) -> None:
        self.assertEqual(self.hub.waiting, 0)
        self.assertEqual(self.hub.subscribedUsers, 0)
        self.assertEqual(self.backend.notifier.subscriberCount(USER), 0)
        self.assertEqual(self.backend.watches, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PingStatusTests(PingTestCase):
    """
    Every Ping status.
    """

    def test_hubInterface(self) -> None:
        """
        The hub provides IPushHub.
        """
        assertProvides(self, IPushHub, self.hub)

    def test_missingParameters(self) -> None:
        """
        An empty Ping with nothing cached is status 3.
        """
        fresh = self.setUpPhone(self.newPhone("fresh"))
        self.assertEqual(self.status(self.successResultOf(self.startPing(fresh, empty=True))), "3")
        only = self.successResultOf(self.startPing(fresh, E("Ping:Ping", E("HeartbeatInterval", "480"))))
        self.assertEqual(self.status(only), "3")

    def test_syntaxErrors(self) -> None:
        """
        Malformed Pings are status 4.
        """
        for document in (
            E("Ping:Ping"),
            self.pingDocument(heartbeat="soon"),
            E("Ping:Ping", E("HeartbeatInterval", "480"), E("Folders")),
            E("Ping:Ping", E("Folders", E("Folder", E("Class", "Email")))),
            E("FolderHierarchy:FolderSync", E("SyncKey", "0")),
        ):
            self.assertEqual(self.status(self.successResultOf(self.startPing(document=document))), "4", document)
        self.assertAllFreed()

    def test_heartbeatBounds(self) -> None:
        """
        Too short or too long a heartbeat is status 5 with the bound.
        """
        low = self.successResultOf(self.startPing(document=self.pingDocument("30")))
        self.assertEqual((self.status(low), low.findtext("HeartbeatInterval")), ("5", "60"))
        high = self.successResultOf(self.startPing(document=self.pingDocument("4000")))
        self.assertEqual((self.status(high), high.findtext("HeartbeatInterval")), ("5", "3540"))
        self.services.minHeartbeat, self.services.maxHeartbeat = 120, 900
        high = self.successResultOf(self.startPing(document=self.pingDocument("901")))
        self.assertEqual(high.findtext("HeartbeatInterval"), "900")

    def test_tooManyFolders(self) -> None:
        """
        More folders than allowed is status 6 with MaxFolders.
        """
        self.services.maxPingFolders = 1
        answer = self.successResultOf(self.startPing(document=self.pingDocument(folders=[self.inbox, self.sent])))
        self.assertEqual((self.status(answer), answer.findtext("MaxFolders")), ("6", "1"))

    def test_unknownFolder(self) -> None:
        """
        A folder the hierarchy does not have, or no hierarchy at all, is 7.
        """
        answer = self.successResultOf(self.startPing(document=self.pingDocument(folders=[self.inbox, "nope"])))
        self.assertEqual(self.status(answer), "7")
        stranger = self.newPhone("stranger")
        self.drive(stranger.provision())
        self.assertEqual(self.status(self.successResultOf(self.startPing(stranger))), "7")

    def test_changedSinceLastSync(self) -> None:
        """
        Mail that arrived after the device's last Sync answers 2 at once.
        """
        self.deliver("arrived before the Ping")
        answer = self.successResultOf(self.startPing())
        self.assertEqual(self.status(answer), "2")
        self.assertEqual([f.text for f in answer.findall("Folders/Folder")], [self.inbox])
        self.assertAllFreed()

    def test_wakesOnDelivery(self) -> None:
        """
        A waiting Ping answers 2 naming the folder as soon as mail lands;
        everything it held is freed.
        """
        d = self.startPing(document=self.pingDocument(folders=[self.sent, self.inbox]))
        self.assertNoResult(d)
        self.assertEqual(self.hub.waiting, 1)
        self.assertEqual(self.backend.watches, [(USER, frozenset({self.sent, self.inbox}))])
        self.clock.advance(100)
        self.assertNoResult(d)
        self.deliver("new mail")
        answer = self.successResultOf(d)
        self.assertEqual(self.status(answer), "2")
        self.assertEqual([f.text for f in answer.findall("Folders/Folder")], [self.inbox])
        self.assertAllFreed()
        # The next Sync brings the message.
        result = self.drive(self.phone.sync(self.inbox))
        self.assertEqual(result[self.inbox].findtext("Commands/Add/ApplicationData/Email:Subject"), "new mail")

    def test_unsyncedFolderNotReported(self) -> None:
        """
        Mail in a folder the device pings but never synced does not answer
        the Ping (a device that never syncs it would loop).
        """
        d = self.startPing(document=self.pingDocument(folders=[self.inbox, self.sent]))
        self.deliver("to sent", folder=FolderType.SENT)
        self.assertNoResult(d)

    def test_otherFolderDoesNotWake(self) -> None:
        """
        A change in a folder the Ping does not watch leaves it waiting.
        """
        d = self.startPing()
        self.deliver("to sent", folder=FolderType.SENT)
        self.assertNoResult(d)

    def test_expiry(self) -> None:
        """
        With nothing changed the answer is 1, a little before the heartbeat
        ends (5 s), so no client times out first.
        """
        d = self.startPing()
        self.clock.advance(474.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.status(self.successResultOf(d)), "1")
        self.assertAllFreed()

    def test_heartbeatFromArrival(self) -> None:
        """
        Time spent on the Ping's own state work (a busy state store) counts
        against its heartbeat: the answer still leaves 5 s before the
        heartbeat ends, counted from the request's arrival.
        """
        from twisted.internet.task import deferLater

        real = self.store.load

        def slowLoad(user: str, device: str, key: str):
            return deferLater(self.clock, 10, lambda: None).addCallback(lambda _: real(user, device, key))

        self.store.load = slowLoad  # type: ignore[method-assign]
        d = self.startPing()
        self.assertNoResult(d)
        for _ in range(8):
            self.clock.advance(10)  # each state read takes 10 s
        self.assertNoResult(d)
        self.clock.advance(474.9 - 80)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.status(self.successResultOf(d)), "1")

    def test_caching(self) -> None:
        """
        An empty Ping reuses the cached heartbeat and folders; a Ping with
        only one of them keeps the other.
        """
        self.drive(self.phone.syncAll(self.sent))
        d = self.startPing(document=self.pingDocument("600", [self.sent]))
        self.clock.advance(595)
        self.assertEqual(self.status(self.successResultOf(d)), "1")
        d = self.startPing(empty=True)
        self.clock.advance(594)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.successResultOf(d)
        d = self.startPing(document=E("Ping:Ping", E("HeartbeatInterval", "300")))
        self.deliver("to sent", folder=FolderType.SENT)
        self.assertEqual(self.status(self.successResultOf(d)), "2")
        d = self.startPing(document=E("Ping:Ping", E("Folders", E("Folder", E("Id", self.inbox), E("Class", "Email")))))
        self.clock.advance(295)
        self.assertEqual(self.status(self.successResultOf(d)), "1")

    def test_supersede(self) -> None:
        """
        A new request of the same device answers its waiting Ping at once
        (status 1); another device's requests do not.
        """
        first = self.startPing()
        second = self.startPing()
        self.assertEqual(self.status(self.successResultOf(first)), "1")
        self.assertNoResult(second)
        other = self.setUpPhone(self.newPhone("other"))
        self.drive(other.syncAll(self.inbox))
        self.assertNoResult(second)
        self.drive(self.phone.call("Settings", E("Settings:Settings", E("UserInformation", E("Get")))))
        self.assertEqual(self.status(self.successResultOf(second)), "1")
        self.assertAllFreed()

    def test_disconnect(self) -> None:
        """
        A client that goes away frees everything at once: no waiter, no
        subscription, no watch, no delayed call.
        """
        d = self.startPing()
        self.assertEqual(self.hub.subscribedUsers, 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertAllFreed()

    def test_oneSubscriptionPerUser(self) -> None:
        """
        Several waiting devices of one user share one subscription.
        """
        other = self.setUpPhone(self.newPhone("other"))
        self.drive(other.syncAll(self.inbox))
        a, b = self.startPing(), self.startPing(other)
        self.assertEqual((self.hub.waiting, self.hub.subscribedUsers), (2, 1))
        self.assertEqual(self.backend.notifier.subscriberCount(USER), 1)
        self.deliver("for both")
        self.assertEqual((self.status(self.successResultOf(a)), self.status(self.successResultOf(b))), ("2", "2"))
        self.assertAllFreed()


class EchoTests(PingTestCase):
    """
    Who is woken by whose changes.
    """

    def test_otherDevicesWoken(self) -> None:
        """
        A device's read, flag and delete wake the user's other devices.
        """
        uid = self.deliver("shared")
        other = self.setUpPhone(self.newPhone("other"))
        self.drive(other.syncAll(self.inbox))
        self.drive(self.phone.syncAll(self.inbox))
        d = self.startPing(other)
        self.assertNoResult(d)
        self.drive(self.phone.sync(self.inbox, commands=[E("Change", E("ServerId", f"{self.inbox}:{uid}"), E("ApplicationData", E("Email:Read", "1")))]))
        self.assertEqual(self.status(self.successResultOf(d)), "2")

    def test_ownChangesNotEchoed(self) -> None:
        """
        After a device's own read, delete and move, its next Ping waits:
        nothing is new to it.
        """
        first, second = self.deliver("a"), self.deliver("b")
        self.drive(self.phone.syncAll(self.inbox))
        self.drive(self.phone.sync(self.inbox, commands=[E("Change", E("ServerId", f"{self.inbox}:{first}"), E("ApplicationData", E("Email:Read", "1"))), E("Delete", E("ServerId", f"{self.inbox}:{second}"))]))
        self.drive(self.phone.syncAll(self.sent))
        third = self.deliver("c")
        self.drive(self.phone.syncAll(self.inbox))
        self.drive(self.phone.call("MoveItems", E("Move:MoveItems", E("Move", E("SrcMsgId", f"{self.inbox}:{third}"), E("SrcFldId", self.inbox), E("DstFldId", self.sent)))))
        d = self.startPing(document=self.pingDocument(folders=[self.inbox, self.sent]))
        self.assertNoResult(d)

    def test_mailToSelf(self) -> None:
        """
        Mail a device sends to its own address is new mail in its Inbox:
        its next Ping answers 2; the Sent copy comes with its Sync of Sent.
        """
        self.drive(self.phone.syncAll(self.sent))
        self.assertIsNone(self.drive(self.phone.sendMail(message("to myself", to=USER, sender=USER), "self-1")))
        answer = self.successResultOf(self.startPing(document=self.pingDocument(folders=[self.inbox, self.sent])))
        self.assertEqual(self.status(answer), "2")
        self.assertEqual(sorted(f.text for f in answer.findall("Folders/Folder")), sorted([self.inbox, self.sent]))
        result = self.drive(self.phone.sync(self.sent))
        self.assertEqual(result[self.sent].findtext("Commands/Add/ApplicationData/Email:Subject"), "to myself")


class HangingSyncTests(PingTestCase):
    """
    Sync with Wait or HeartbeatInterval.
    """

    def hangingSync(self, *extra: wbxml.Element, commands=None) -> "Deferred[Any]":
        request = E("AirSync:Sync", E("Collections", self.phone.collectionRequest(self.inbox, commands=commands)), *extra)
        return Deferred.fromCoroutine(self.phone.call("Sync", request))

    def test_wakesWithChanges(self) -> None:
        """
        Nothing to say: the answer waits, and brings the new mail when it
        lands.
        """
        d = self.hangingSync(E("HeartbeatInterval", "300"))
        self.assertNoResult(d)
        self.deliver("pushed")
        answer = self.successResultOf(d)
        self.phone.applySync(answer)
        self.assertIn("pushed", [s for s, _ in self.phone.mirror(self.inbox).values()])
        self.assertAllFreed()

    def test_timeout(self) -> None:
        """
        Wait is in minutes; when it ends the answer is empty.
        """
        d = self.hangingSync(E("Wait", "2"))
        self.clock.advance(114.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        self.assertAllFreed()

    def test_maxHeartbeat(self) -> None:
        """
        Regression (torture suite): a hanging Sync waited the device's Wait
        (up to 59 minutes) whatever --max-heartbeat said; the empty answer
        now comes within the server's longest heartbeat.
        """
        self.services.maxHeartbeat = 90
        d = self.hangingSync(E("Wait", "5"))
        self.clock.advance(89)
        self.assertIsNone(self.successResultOf(d))
        self.assertAllFreed()

    def test_supersededAndDisconnected(self) -> None:
        """
        A newer request ends the wait with an empty answer; a client that
        goes away frees everything.
        """
        d = self.hangingSync(E("Wait", "5"))
        self.drive(self.phone.call("Settings", E("Settings:Settings", E("UserInformation", E("Get")))))
        self.assertIsNone(self.successResultOf(d))
        d = self.hangingSync(E("Wait", "5"))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertAllFreed()

    def test_clientChangesAnsweredAtOnce(self) -> None:
        """
        A hanging Sync carrying the device's own changes answers at once.
        """
        uid = self.deliver("x")
        self.drive(self.phone.syncAll(self.inbox))
        d = self.hangingSync(E("Wait", "5"), commands=[E("Change", E("ServerId", f"{self.inbox}:{uid}"), E("ApplicationData", E("Email:Read", "1")))])
        self.assertIsNotNone(self.successResultOf(d))
        self.assertEqual(self.hub.waiting, 0)


class PendingTests(PingTestCase):
    """
    What the web adapter sees of a Ping through L{Dispatcher.begin}.
    """

    def test_waitingPingIsPending(self) -> None:
        """
        A Ping that must wait answers at once with a L{Pending}: no
        coroutine waits with it. Its Deferred brings the answer when mail
        lands, and everything is freed after.
        """
        answers: List[Any] = []

        async def send(query: bytes, headers: Dict[str, str], body: bytes) -> Tuple[int, Optional[str], bytes]:
            lowered = {k.lower(): v for k, v in headers.items()}
            answer = await self.dispatcher.begin(query, lambda name: lowered.get(name.lower()), USER, body)
            answers.append(answer)
            if isinstance(answer, Pending):
                answer = await answer.deferred
            return answer.code, answer.contentType, answer.body

        self.phone.transport = send
        d = self.startPing()
        self.assertNoResult(d)
        self.assertIsInstance(answers[0], Pending)
        self.deliver("wake up")
        self.assertEqual(self.status(self.successResultOf(d)), "2")
        self.assertAllFreed()

    def test_answerAtOnceIsNotPending(self) -> None:
        """
        A Ping with something to say at once answers a plain L{Response}.
        """
        self.deliver("already here")
        body = wbxml.encode(self.pingDocument())
        query = f"Cmd=Ping&User={USER}&DeviceId={self.phone.deviceId}&DeviceType=iPhone".encode()
        headers = {"ms-asprotocolversion": "14.1", "content-type": "application/vnd.ms-sync.wbxml"}
        answer = self.successResultOf(
            Deferred.fromCoroutine(self.dispatcher.begin(query, lambda name: headers.get(name.lower()), USER, body))
        )
        self.assertIsInstance(answer, Response)
        self.assertEqual(self.status(wbxml.decode(answer.body)), "2")
