# -*- test-case-name: tests.test_e2e_phone -*-
"""
End to end: the service as twistd builds it (maildir, SQLite, thread
pools) behind a real TLS socket on 127.0.0.1, and a scripted phone doing a
first setup and a day's use at 14.1 and at 16.1. After each step the
maildir on disk must show the effect, and a second device of the same user
must see the first one's changes on its next Sync.
"""

from __future__ import annotations

import email.message
import email.utils
import os
from typing import Dict, Optional

from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from directpush import auth
from directpush.wbxml import E

from .phone import Phone, Transport, basicAuth
from .server import RunningServer

USER = "alice@example.org"
PASSWORD = "Correct-Horse-9"
INBOX_SIZE = 1000
NOW = 1_750_000_000


def rawMessage(n: int, attachment: bool = False) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"] = "Bob <bob@example.org>"
    msg["To"] = f"Alice <{USER}>"
    msg["Subject"] = f"Message {n}"
    msg["Date"] = email.utils.formatdate(NOW + n)
    msg["Message-ID"] = f"<m{n}@example.org>"
    msg.set_content(f"Body of message {n}.\n" + "Lorem ipsum dolor sit amet. " * 20)
    if attachment:
        msg.add_attachment(b"%PDF-1.4 fake" * 100, maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes()


def maildirFiles(folder: FilePath) -> Dict[str, str]:
    """
    Message files of a maildir folder: base name -> flags.
    """
    out = {}
    for sub in ("new", "cur"):
        for name in os.listdir(folder.child(sub).path):
            base, _, info = name.partition(":2,")
            out[base] = info
    return out


class PhoneEndToEndTests(TestCase):
    """
    Setup and daily use over HTTPS against a maildir.
    """

    timeout = 300

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.data = FilePath(self.mktemp())
        self.data.makedirs()
        auth.writePasswd(
            self.data.child("users"),
            {USER: auth.hashPassword(PASSWORD, iterations=1000), "bob@example.org": "{PLAIN}x"},
        )
        # A maildir as an MDA would leave it: 1,000 messages in new/.
        self.maildir = self.data.child("mail").child(USER)
        for sub in ("new", "cur", "tmp"):
            self.maildir.child(sub).makedirs()
        for n in range(INBOX_SIZE):
            path = self.maildir.child("new").child(f"{NOW + n}.M{n}P1.test")
            path.setContent(rawMessage(n, attachment=(n == INBOX_SIZE - 1)))
            os.utime(path.path, (NOW + n, NOW + n))
        self.server = RunningServer(self, self.data, ["--domain", "example.org"])
        self.agent = self.server.agent

    def transport(self) -> Transport:
        return self.server.transport(USER, PASSWORD)

    def folderDir(self, name: Optional[str]) -> FilePath:
        return self.maildir if name is None else self.maildir.child("." + name)

    async def dailyUse(self, version: str) -> None:
        phone = Phone(self.transport(), deviceId=f"phone{version.replace('.', '')}", version=version)
        other = Phone(self.transport(), deviceId=f"tablet{version.replace('.', '')}", version=version)

        # OPTIONS and Settings, as iOS starts.
        h = Headers({b"Authorization": [basicAuth(USER, PASSWORD).encode()]})
        options = await self.agent.request(
            b"OPTIONS", self.server.url, h
        )
        await readBody(options)
        self.assertIn(version.encode(), options.headers.getRawHeaders(b"MS-ASProtocolVersions")[0])
        settings = await phone.call("Settings", E("Settings:Settings", E("UserInformation", E("Get"))))
        self.assertIn(USER, [e.text for e in settings.findall("UserInformation/Get/Accounts/Account/EmailAddresses/PrimarySmtpAddress")] + [e.text for e in settings.findall("UserInformation/Get/EmailAddresses/SMTPAddress")])

        # FolderSync -> 142 -> Provision -> FolderSync.
        refused = await phone.folderSync()
        self.assertEqual(refused.findtext("Status"), "142")
        for device in (phone, other):
            await device.provision()
            self.assertIsNotNone(device.policyKey)
            self.assertEqual((await device.folderSync()).findtext("Status"), "1")
        inbox = phone.folderOfType(2)
        sent = phone.folderOfType(5)

        # Paged initial Sync of the 1,000-message Inbox.
        rounds = await phone.syncAll(inbox, windowSize=100)
        self.assertEqual(rounds, INBOX_SIZE // 100)
        mirror = phone.mirror(inbox)
        self.assertEqual(len(mirror), INBOX_SIZE)
        self.assertEqual(sorted(s for s, _ in mirror.values()), sorted(f"Message {n}" for n in range(INBOX_SIZE)))
        await other.syncAll(inbox, windowSize=512)
        self.assertEqual(len(other.mirror(inbox)), INBOX_SIZE)

        byName = {subject: sid for sid, (subject, _) in mirror.items()}
        last = byName[f"Message {INBOX_SIZE - 1}"]

        # ItemOperations: a body, the whole MIME message, an attachment.
        fetched = await phone.call(
            "ItemOperations",
            E("ItemOperations:ItemOperations", E("Fetch", E("Store", "Mailbox"), E("AirSync:CollectionId", inbox), E("AirSync:ServerId", last), E("Options", E("AirSyncBase:BodyPreference", E("Type", "1"))))),
        )
        self.assertIn("Lorem ipsum", fetched.findtext("Response/Fetch/Properties/AirSyncBase:Body/Data"))
        reference = fetched.findtext("Response/Fetch/Properties/AirSyncBase:Attachments/Attachment/FileReference")
        mime = await phone.call(
            "ItemOperations",
            E("ItemOperations:ItemOperations", E("Fetch", E("Store", "Mailbox"), E("AirSync:CollectionId", inbox), E("AirSync:ServerId", last), E("Options", E("AirSync:MIMESupport", "2"), E("AirSyncBase:BodyPreference", E("Type", "4"))))),
        )
        self.assertIn(f"Subject: Message {INBOX_SIZE - 1}", mime.findtext("Response/Fetch/Properties/AirSyncBase:Body/Data"))
        attachment = await phone.call(
            "ItemOperations", E("ItemOperations:ItemOperations", E("Fetch", E("Store", "Mailbox"), E("AirSyncBase:FileReference", reference)))
        )
        import base64

        self.assertEqual(base64.b64decode(attachment.findtext("Response/Fetch/Properties/Data")), b"%PDF-1.4 fake" * 100)

        # Mark read, flag, delete, move: each shows on disk.
        before = maildirFiles(self.folderDir(None))
        read, flagged, deleted, moved = (byName[f"Message {n}"] for n in (1, 2, 3, 4))
        await phone.sync(
            inbox,
            commands=[
                E("Change", E("ServerId", read), E("ApplicationData", E("Email:Read", "1"))),
                E("Change", E("ServerId", flagged), E("ApplicationData", E("Email:Flag", E("Status", "2"), E("FlagType", "Flag for follow up")))),
                E("Delete", E("ServerId", deleted)),
            ],
        )
        after = maildirFiles(self.folderDir(None))
        self.assertEqual(len(after), INBOX_SIZE - 1)
        changedFlags = sorted(flags for base, flags in after.items() if before.get(base) != flags)
        self.assertEqual(changedFlags, ["F", "S"])
        self.assertEqual(len(maildirFiles(self.folderDir("Trash"))), 1)
        moveAnswer = await phone.call("MoveItems", E("Move:MoveItems", E("Move", E("SrcMsgId", moved), E("SrcFldId", inbox), E("DstFldId", sent))))
        self.assertEqual(moveAnswer.findtext("Response/Status"), "3")
        self.assertEqual(len(maildirFiles(self.folderDir(None))), INBOX_SIZE - 2)
        self.assertEqual(len(maildirFiles(self.folderDir("Sent"))), 1)

        # The other device sees all of it on its next Sync.
        result = await other.sync(inbox)
        kinds = sorted(c.name for c in result[inbox].find("Commands").children)
        self.assertEqual(kinds, ["Change", "Change", "Delete", "Delete"])
        self.assertEqual(other.mirror(inbox)[read][1], "1")

        # Send to a local user, with a Sent copy.
        outgoing = email.message.EmailMessage()
        outgoing["From"] = USER
        outgoing["To"] = "bob@example.org"
        outgoing["Subject"] = f"Hello Bob {version}"
        outgoing.set_content("See you.")
        self.assertIsNone(await phone.sendMail(outgoing.as_bytes(), f"client-{version}"))
        bobInbox = self.data.child("mail").child("bob@example.org")
        self.assertEqual(len(maildirFiles(bobInbox)), 1)
        self.assertEqual(len(maildirFiles(self.folderDir("Sent"))), 2)

        # FolderCreate, FolderUpdate, FolderDelete on disk ('.' separates
        # levels in Maildir++, so it is not in the names).
        tag = version.replace(".", "")
        created = await phone.call("FolderCreate", E("FolderHierarchy:FolderCreate", E("SyncKey", phone.hierarchyKey), E("ParentId", "0"), E("DisplayName", f"Projects{tag}"), E("Type", "12")))
        self.assertEqual(created.findtext("Status"), "1")
        phone.hierarchyKey = created.findtext("SyncKey")
        self.assertTrue(self.folderDir(f"Projects{tag}").isdir())
        updated = await phone.call("FolderUpdate", E("FolderHierarchy:FolderUpdate", E("SyncKey", phone.hierarchyKey), E("ServerId", created.findtext("ServerId")), E("ParentId", "0"), E("DisplayName", f"Archive{tag}")))
        self.assertEqual(updated.findtext("Status"), "1")
        phone.hierarchyKey = updated.findtext("SyncKey")
        self.assertTrue(self.folderDir(f"Archive{tag}").isdir())
        self.assertFalse(self.folderDir(f"Projects{tag}").exists())
        answer = await other.folderSync()
        self.assertEqual(answer.findtext("Changes/Add/DisplayName"), f"Archive{tag}")
        deletedFolder = await phone.call("FolderDelete", E("FolderHierarchy:FolderDelete", E("SyncKey", phone.hierarchyKey), E("ServerId", created.findtext("ServerId"))))
        self.assertEqual(deletedFolder.findtext("Status"), "1")
        self.assertFalse(self.folderDir(f"Archive{tag}").exists())

        # Search and Find.
        found = await phone.call("Search", E("Search:Search", E("Store", E("Name", "Mailbox"), E("Query", E("And", E("AirSync:Class", "Email"), E("AirSync:CollectionId", inbox), E("FreeText", "Message 999"))), E("Options", E("Range", "0-9")))))
        self.assertEqual(found.findtext("Response/Store/Result/Properties/Email:Subject"), "Message 999")
        if version == "16.1":
            result = await phone.call("Find", E("Find:Find", E("SearchId", "1"), E("ExecuteSearch", E("MailBoxSearchCriterion", E("Query", E("AirSync:Class", "Email"), E("AirSync:CollectionId", sent), E("FreeText", "Bob")), E("Options", E("Range", "0-9"))))))
            self.assertEqual(result.findtext("Status"), "1")
            self.assertEqual(result.findtext("Response/Result/Properties/Email:Subject"), f"Hello Bob {version}")

    async def test_version141(self) -> None:
        """
        A 14.1 phone's setup and day.
        """
        await self.dailyUse("14.1")

    async def test_version161(self) -> None:
        """
        A 16.1 phone's setup and day, with Find.
        """
        await self.dailyUse("16.1")
