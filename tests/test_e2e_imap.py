# -*- test-case-name: tests.test_e2e_imap -*-
"""
End to end through the IMAP bridge: the service as twistd builds it with
C{--backend imap}, talking implicit TLS (verified against a private CA
file) to a private Dovecot, a phone over HTTPS. Pings woken by Dovecot's
LDA, by another IMAP client's APPEND and flag change; a Dovecot restart
while a Ping waits; the phone's setup and day, checked through IMAP.
"""

from __future__ import annotations

import email.message
import email.utils
import imaplib
import ssl
from typing import Any, Callable, List, Optional

from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from directpush import certificate
from directpush.wbxml import E

from .dovecot import SKIP, Dovecot
from .phone import Phone, Transport
from .server import RunningServer

USER = "erin@example.org"
PASSWORD = "Imap-Push-3"
NOW = 1_750_000_000


def rawMessage(n: int, subject: Optional[str] = None) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"] = "Bob <bob@example.org>"
    msg["To"] = f"Erin <{USER}>"
    msg["Subject"] = subject or f"Message {n}"
    msg["Date"] = email.utils.formatdate(NOW + n)
    msg["Message-ID"] = f"<m{n}@example.org>"
    msg.set_content(f"Body of message {n}.\n" + "Lorem ipsum dolor sit amet. " * 20)
    return msg.as_bytes().replace(b"\n", b"\r\n")


class IMAPEndToEndTests(TestCase):
    """
    A phone against the bridge against Dovecot.
    """

    skip = SKIP
    timeout = 120
    #: Whether Dovecot marks its special folders (RFC 6154).
    specialUse = True

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.data = FilePath(self.mktemp())
        self.data.makedirs()
        tls = FilePath(self.mktemp())
        key, cert, _ = certificate.ensureSelfSigned(tls, "localhost")
        self.cert = cert
        self.dovecot = Dovecot(specialUse=self.specialUse, certificate=cert.path, key=key.path)
        self.dovecot.addUser(USER, PASSWORD)
        self.dovecot.start()
        self.addCleanup(self.dovecot.cleanup)
        self.server = RunningServer(
            self,
            self.data,
            [
                "--backend", "imap",
                "--imap", f"tls:localhost:{self.dovecot.tlsPort}",
                "--imap-ca-file", cert.path,
                "--policy", "none",
                "--render-workers", "0",
            ],
        )
        self.service = self.server.service

    def transport(self, password: str = PASSWORD) -> Transport:
        return self.server.transport(USER, password)

    def imap(self) -> imaplib.IMAP4_SSL:
        """
        Another mail client, over verified TLS (blocking: a test helper).
        """
        context = ssl.create_default_context(cafile=self.cert.path)
        client = imaplib.IMAP4_SSL("localhost", self.dovecot.tlsPort, ssl_context=context)
        client.login(USER, PASSWORD)
        self.addCleanup(client.logout)
        return client

    async def sleep(self, seconds: float) -> None:
        await deferLater(self.reactor, seconds, lambda: None)

    async def waitFor(self, condition: Callable[[], Any], what: str) -> None:
        for _ in range(1000):
            if condition():
                return
            await self.sleep(0.01)
        self.fail(f"timed out waiting for {what}")

    async def ready(self) -> "tuple[Phone, str]":
        phone = Phone(self.transport(), deviceId="imapphone")
        self.assertEqual((await phone.folderSync()).findtext("Status"), "1")
        inbox = phone.folderOfType(2)
        await phone.syncAll(inbox)
        return phone, inbox

    async def ping(self, phone: Phone, inbox: str) -> "defer.Deferred[Any]":
        """
        Send a Ping on the Inbox; return once the server holds it and the
        bridge IDLEs.
        """
        ping = defer.Deferred.fromCoroutine(
            phone.call(
                "Ping",
                E("Ping:Ping", E("HeartbeatInterval", "600"), E("Folders", E("Folder", E("Id", inbox), E("Class", "Email")))),
            )
        )
        await self.waitFor(lambda: self.service.hub.waiting == 1, "the Ping to wait")
        backend = self.backend()
        await self.waitFor(
            lambda: backend._sessions[USER].watcher is not None and backend._sessions[USER].watcher.client is not None
            and backend._sessions[USER].watcher.client.idling,
            "IDLE",
        )
        self.assertNoResult(ping)
        return ping

    def backend(self) -> Any:
        from directpush.backends.imap import IMAPBackend

        [backend] = [s._backend for s in self.service if isinstance(getattr(s, "_backend", None), IMAPBackend)]
        return backend

    async def assertPushed(self, ping: "defer.Deferred[Any]", inbox: str) -> None:
        answer = await ping
        self.assertEqual(answer.findtext("Status"), "2")
        self.assertEqual([f.text for f in answer.findall("Folders/Folder")], [inbox])

    async def test_badPassword(self) -> None:
        """
        A wrong password is refused with 401 (IMAP said NO); the right one
        works.
        """
        phone = Phone(self.transport("wrong"), deviceId="badphone")
        with self.assertRaises(Exception):
            await phone.folderSync()
        phone = Phone(self.transport(), deviceId="goodphone")
        self.assertEqual((await phone.folderSync()).findtext("Status"), "1")

    async def test_ldaWakesPing(self) -> None:
        """
        A message delivered by Dovecot's LDA answers the waiting Ping; the
        next Sync returns it.
        """
        phone, inbox = await self.ready()
        ping = await self.ping(phone, inbox)
        self.dovecot.deliver(USER, rawMessage(1, "Delivered by the LDA"))
        await self.assertPushed(ping, inbox)
        result = await phone.sync(inbox)
        self.assertEqual(result[inbox].findtext("Commands/Add/ApplicationData/Email:Subject"), "Delivered by the LDA")

    async def test_appendWakesPing(self) -> None:
        """
        A message another IMAP client APPENDs answers the Ping.
        """
        phone, inbox = await self.ready()
        ping = await self.ping(phone, inbox)
        self.imap().append("INBOX", None, None, rawMessage(2, "Appended elsewhere"))
        await self.assertPushed(ping, inbox)
        result = await phone.sync(inbox)
        self.assertEqual(result[inbox].findtext("Commands/Add/ApplicationData/Email:Subject"), "Appended elsewhere")

    async def test_flagWakesPing(self) -> None:
        """
        A flag another IMAP client sets answers the Ping; the next Sync
        brings the change.
        """
        self.imap().append("INBOX", None, None, rawMessage(3))
        phone, inbox = await self.ready()
        ping = await self.ping(phone, inbox)
        other = self.imap()
        other.select("INBOX")
        other.store("1", "+FLAGS", "\\Seen")
        await self.assertPushed(ping, inbox)
        result = await phone.sync(inbox)
        self.assertEqual(result[inbox].findtext("Commands/Change/ApplicationData/Email:Read"), "1")

    async def test_dovecotRestart(self) -> None:
        """
        Dovecot restarts while a Ping waits: the bridge reconnects its IDLE
        connection, the Ping stays valid (nothing changed for the device,
        so it keeps waiting), and a change made after the restart answers
        it; the next Sync, on a new command connection, brings the change.
        """
        phone, inbox = await self.ready()
        ping = await self.ping(phone, inbox)
        watcher = self.backend()._sessions[USER].watcher
        # The Ping's IDLE connection is made as the Ping arrives: restart
        # once it is up, or there is nothing to reconnect yet.
        await self.waitFor(lambda: watcher.connections == 1 and watcher.client is not None and watcher.client.idling, "IDLE")
        self.dovecot.restart()
        await self.waitFor(
            lambda: watcher.connections >= 2 and watcher.client is not None and watcher.client.idling, "IDLE again"
        )
        self.assertNoResult(ping)
        self.assertEqual(self.service.hub.waiting, 1)
        self.dovecot.deliver(USER, rawMessage(4, "After the restart"))
        await self.assertPushed(ping, inbox)
        result = await phone.sync(inbox)
        self.assertEqual(result[inbox].findtext("Commands/Add/ApplicationData/Email:Subject"), "After the restart")

    async def test_phoneDay(self) -> None:
        """
        The phone's setup and day through the bridge: Provision, FolderSync,
        a paged initial Sync, a body fetch, read / flag / delete / move,
        folder create / rename / delete, Search; each shows to another IMAP
        client, and a second device sees the first one's changes.
        """
        client = self.imap()
        for n in range(300):
            client.append("INBOX", None, imaplib.Time2Internaldate(NOW + n), rawMessage(n))
        phone = Phone(self.transport(), deviceId="phoneday", version="16.1")
        other = Phone(self.transport(), deviceId="tabletday", version="16.1")
        self.assertEqual((await phone.folderSync()).findtext("Status"), "1")
        self.assertEqual((await other.folderSync()).findtext("Status"), "1")
        inbox = phone.folderOfType(2)
        trash = phone.folderOfType(4)
        sent = phone.folderOfType(5)
        self.assertEqual(await phone.syncAll(inbox, windowSize=100), 3)
        await other.syncAll(inbox, windowSize=512)
        mirror = phone.mirror(inbox)
        self.assertEqual(len(mirror), 300)
        self.assertEqual(len(other.mirror(inbox)), 300)
        byName = {subject: sid for sid, (subject, _) in mirror.items()}

        fetched = await phone.call(
            "ItemOperations",
            E("ItemOperations:ItemOperations", E("Fetch", E("Store", "Mailbox"), E("AirSync:CollectionId", inbox), E("AirSync:ServerId", byName["Message 299"]), E("Options", E("AirSyncBase:BodyPreference", E("Type", "1"))))),
        )
        self.assertIn("Body of message 299", fetched.findtext("Response/Fetch/Properties/AirSyncBase:Body/Data"))

        read, flagged, deleted, moved = (byName[f"Message {n}"] for n in (1, 2, 3, 4))
        await phone.sync(
            inbox,
            commands=[
                E("Change", E("ServerId", read), E("ApplicationData", E("Email:Read", "1"))),
                E("Change", E("ServerId", flagged), E("ApplicationData", E("Email:Flag", E("Status", "2"), E("FlagType", "Flag for follow up")))),
                E("Delete", E("ServerId", deleted)),
            ],
        )
        moveAnswer = await phone.call("MoveItems", E("Move:MoveItems", E("Move", E("SrcMsgId", moved), E("SrcFldId", inbox), E("DstFldId", sent))))
        self.assertEqual(moveAnswer.findtext("Response/Status"), "3")

        def search(folder: str, criteria: str) -> List[bytes]:
            client.select(folder)
            typ, data = client.search(None, criteria)
            return data[0].split()

        self.assertEqual(len(search("INBOX", "ALL")), 298)
        self.assertEqual(len(search("INBOX", "SEEN")), 1)
        self.assertEqual(len(search("INBOX", "FLAGGED")), 1)
        # Dovecot's "Deleted Messages" with SPECIAL-USE, the folder the
        # bridge made for Deleted Items without it.
        if self.specialUse:
            self.assertEqual(phone.folders[trash][1], "Deleted Messages")
        self.assertEqual(len(search(f'"{phone.folders[trash][1]}"', "ALL")), 1)
        self.assertEqual(len(search(f'"{phone.folders[sent][1]}"', "ALL")), 1)

        result = await other.sync(inbox)
        kinds = sorted(c.name for c in result[inbox].find("Commands").children)
        self.assertEqual(kinds, ["Change", "Change", "Delete", "Delete"])
        self.assertEqual(other.mirror(inbox)[read][1], "1")
        await other.sync(trash)

        created = await phone.call("FolderCreate", E("FolderHierarchy:FolderCreate", E("SyncKey", phone.hierarchyKey), E("ParentId", "0"), E("DisplayName", "Projekte \u00fc"), E("Type", "12")))
        self.assertEqual(created.findtext("Status"), "1")
        phone.hierarchyKey = created.findtext("SyncKey")
        names = [line.decode() for line in client.list('""', "*")[1]]
        self.assertTrue(any('"Projekte &APw-"' in n or "Projekte &APw-" in n for n in names), names)
        updated = await phone.call("FolderUpdate", E("FolderHierarchy:FolderUpdate", E("SyncKey", phone.hierarchyKey), E("ServerId", created.findtext("ServerId")), E("ParentId", inbox), E("DisplayName", "Renamed")))
        self.assertEqual(updated.findtext("Status"), "1")
        phone.hierarchyKey = updated.findtext("SyncKey")
        names = [line.decode() for line in client.list('""', "*")[1]]
        self.assertTrue(any(n.endswith("INBOX/Renamed") for n in names), names)
        answer = await other.folderSync()
        self.assertEqual(answer.findtext("Changes/Add/DisplayName"), "Renamed")
        gone = await phone.call("FolderDelete", E("FolderHierarchy:FolderDelete", E("SyncKey", phone.hierarchyKey), E("ServerId", created.findtext("ServerId"))))
        self.assertEqual(gone.findtext("Status"), "1")
        names = [line.decode() for line in client.list('""', "*")[1]]
        self.assertFalse(any("Renamed" in n for n in names), names)

        found = await phone.call("Search", E("Search:Search", E("Store", E("Name", "Mailbox"), E("Query", E("And", E("AirSync:Class", "Email"), E("AirSync:CollectionId", inbox), E("FreeText", "Message 299"))), E("Options", E("Range", "0-9")))))
        self.assertEqual(found.findtext("Response/Store/Result/Properties/Email:Subject"), "Message 299")


class IMAPEndToEndNoSpecialUseTests(IMAPEndToEndTests):
    """
    The same against a Dovecot that marks no folder SPECIAL-USE: Sent,
    Trash and the rest are found by their names.
    """

    specialUse = False
