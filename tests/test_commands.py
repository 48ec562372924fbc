# -*- test-case-name: tests.test_commands -*-
"""
The EAS commands, driven through the dispatcher by a scripted phone over a
memory mailbox and state store.
"""

from __future__ import annotations

import email.message
import email.utils
from typing import Any, Coroutine, List, Optional, Tuple, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from directpush import wbxml
from directpush.backends.memory import MemoryBackend
from directpush.interfaces import IDirectory, ISubmission
from directpush.model import Flag, FolderType
from directpush.protocol import mail
from directpush.protocol.commands import makeDispatcher
from directpush.protocol.core import Policy, Services
from directpush.state.memory import MemoryStateStore
from directpush.wbxml import E

from .phone import Phone, dispatcherTransport

T = TypeVar("T")
USER = "alice@example.org"
NOW = 1_750_000_000.0


def message(
    subject: str,
    body: str = "Hello",
    sender: str = "Bob <bob@example.org>",
    to: str = "Alice <alice@example.org>",
    attachment: Optional[Tuple[str, bytes]] = None,
    html: Optional[str] = None,
) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(NOW)
    msg["Message-ID"] = email.utils.make_msgid(domain="example.org")
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    if attachment is not None:
        msg.add_attachment(attachment[1], maintype="application", subtype="octet-stream", filename=attachment[0])
    return msg.as_bytes()


@implementer(ISubmission)
class FakeSubmission:
    def __init__(self, backend: MemoryBackend) -> None:
        self.sent: List[Tuple[str, str, List[str], bytes]] = []
        self.retries: List[Optional[float]] = []
        self.backend = backend
        self.fail: Optional[Exception] = None

    def submit(self, user: str, sender: str, recipients: Any, raw: bytes, retrySince: Any = None) -> "Deferred[None]":
        if self.fail is not None:
            from twisted.internet.defer import fail

            return fail(self.fail)
        self.sent.append((user, sender, list(recipients), raw))
        self.retries.append(retrySince)
        return succeed(None)


@implementer(IDirectory)
class FakeDirectory:
    people = [
        {"name": "alice", "address": "alice@example.org"},
        {"name": "albert", "address": "albert@example.org"},
        {"name": "bob", "address": "bob@example.org"},
    ]

    def lookup(self, query: str, limit: int) -> "Deferred[List[Any]]":
        q = query.lower()
        return succeed([p for p in self.people if p["name"].startswith(q) or p["address"].startswith(q)][:limit])

    def localUser(self, address: str) -> "Deferred[Optional[str]]":
        return succeed(next((p["address"] for p in self.people if p["address"] == address.lower()), None))


class CommandTestCase(SynchronousTestCase):
    policy = Policy.PERMISSIVE
    version = "14.1"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.backend = MemoryBackend(self.clock)
        self.store = MemoryStateStore()
        self.submission = FakeSubmission(self.backend)
        self.services = Services(
            self.backend,
            self.store,
            self.clock,
            submission=self.submission,
            directory=FakeDirectory(),
            policy=self.policy,
            domain="example.org",
        )
        self.dispatcher = makeDispatcher(self.services)
        self.mailbox = self.successResultOf(self.backend.mailbox(USER))
        self.phone = self.newPhone("phone1")

    def newPhone(self, deviceId: str, version: Optional[str] = None) -> Phone:
        return Phone(dispatcherTransport(self.dispatcher, USER), deviceId=deviceId, version=version or self.version)

    def drive(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """
        Run a phone coroutine; with memory services it completes at once.
        """
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def folderId(self, kind: FolderType) -> str:
        folders = self.successResultOf(self.mailbox.folders())
        return next(f.id for f in folders if f.type == kind)

    def deliver(self, subject: str, folder: FolderType = FolderType.INBOX, **kw: Any) -> str:
        self.clock.advance(1)
        return self.successResultOf(self.mailbox.append(self.folderId(folder), message(subject, **kw)))

    def setUpPhone(self, phone: Optional[Phone] = None) -> Phone:
        phone = phone or self.phone
        self.drive(phone.provision())
        self.drive(phone.folderSync())
        return phone

    def messages(self, kind: FolderType = FolderType.INBOX) -> dict:
        return {i.uid: i for i in self.successResultOf(self.mailbox.messages(self.folderId(kind)))}


class ProvisionTests(CommandTestCase):
    """
    The policy handshake and what it guards.
    """

    def test_handshake(self) -> None:
        """
        Before provisioning FolderSync gets 142; Provision hands out a
        permissive policy with a temporary key, the acknowledgement a final
        key, and with it FolderSync works. Device information is stored.
        """
        answer = self.drive(self.phone.folderSync())
        self.assertEqual(answer.findtext("Status"), "142")
        first = self.drive(
            self.phone.call(
                "Provision",
                E(
                    "Provision:Provision",
                    E("Settings:DeviceInformation", E("Set", E("Model", "iPhone15,2"))),
                    E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"))),
                ),
            )
        )
        self.assertEqual(first.findtext("Settings:DeviceInformation/Status"), "1")
        self.assertEqual(first.findtext("Status"), "1")
        policy = first.find("Policies/Policy")
        self.assertEqual(policy.findtext("Status"), "1")
        self.assertEqual(policy.findtext("Data/EASProvisionDoc/DevicePasswordEnabled"), "0")
        temporary = policy.findtext("PolicyKey")
        # A wrong acknowledgement is refused with Policy status 5.
        wrong = self.drive(
            self.phone.call(
                "Provision",
                E("Provision:Provision", E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"), E("PolicyKey", "12345"), E("Status", "1")))),
            )
        )
        self.assertEqual(wrong.findtext("Policies/Policy/Status"), "5")
        second = self.drive(
            self.phone.call(
                "Provision",
                E("Provision:Provision", E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"), E("PolicyKey", temporary), E("Status", "1")))),
            )
        )
        final = second.findtext("Policies/Policy/PolicyKey")
        self.assertNotEqual(final, temporary)
        self.assertIsNone(second.find("Policies/Policy/Data"))
        self.phone.policyKey = int(temporary)
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Status"), "144")
        self.phone.policyKey = int(final)
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Status"), "1")
        record = self.drive(self.services.device(_request(self.phone)))
        self.assertEqual(record["info"], {"Model": "iPhone15,2"})

    def test_http449For121(self) -> None:
        """
        Up to 12.1 the refusal is HTTP 449.
        """
        phone = self.newPhone("old", "12.1")
        code, _, _ = self.drive(phone.send("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", "0"))))
        self.assertEqual(code, 449)
        self.drive(phone.provision())
        self.assertEqual(self.drive(phone.folderSync()).findtext("Status"), "1")

    def test_remoteWipe(self) -> None:
        """
        A wipe marked for a device gives 140, a RemoteWipe in Provision,
        and the device's report clears it.
        """
        self.setUpPhone()
        record = self.drive(self.services.device(_request(self.phone)))
        record["wipe"] = True
        self.drive(self.services.saveDevice(_request(self.phone), record))
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Status"), "140")
        answer = self.drive(
            self.phone.call("Provision", E("Provision:Provision", E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML")))))
        )
        self.assertIsNotNone(answer.find("RemoteWipe"))
        report = self.drive(self.phone.call("Provision", E("Provision:Provision", E("RemoteWipe", E("Status", "1")))))
        self.assertEqual(report.findtext("Status"), "1")
        self.assertFalse(self.drive(self.services.device(_request(self.phone)))["wipe"])


def _request(phone: Phone):
    from directpush.protocol.request import EASRequest

    return EASRequest("Sync", USER, phone.deviceId, phone.deviceType, phone.version)


class NoPolicyTests(CommandTestCase):
    """
    With no policy, devices sync at once.
    """

    policy = Policy.NONE

    def test_noProvisioning(self) -> None:
        """
        FolderSync works unprovisioned; an unprompted Provision is told
        there is no policy (Policy status 2).
        """
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Status"), "1")
        self.drive(self.phone.provision())
        self.assertIsNone(self.phone.policyKey)


class SettingsTests(CommandTestCase):
    """
    Settings.
    """

    def test_userInformation(self) -> None:
        """
        14.1 gets Accounts with the primary address; 12.1 EmailAddresses.
        """
        answer = self.drive(self.phone.call("Settings", E("Settings:Settings", E("UserInformation", E("Get")))))
        self.assertEqual(
            answer.findtext("UserInformation/Get/Accounts/Account/EmailAddresses/PrimarySmtpAddress"), USER
        )
        old = self.newPhone("old", "12.1")
        answer = self.drive(old.call("Settings", E("Settings:Settings", E("UserInformation", E("Get")))))
        self.assertEqual(answer.findtext("UserInformation/Get/EmailAddresses/SMTPAddress"), USER)

    def test_oof(self) -> None:
        """
        Out-of-office settings are kept per user: set by one device, read
        by another.
        """
        answer = self.drive(
            self.phone.call(
                "Settings",
                E(
                    "Settings:Settings",
                    E("Oof", E("Set", E("OofState", "1"), E("OofMessage", E("AppliesToInternal"), E("Enabled", "1"), E("ReplyMessage", "Away"), E("BodyType", "Text")))),
                ),
            )
        )
        self.assertEqual(answer.findtext("Oof/Status"), "1")
        other = self.newPhone("phone2")
        answer = self.drive(other.call("Settings", E("Settings:Settings", E("Oof", E("Get", E("BodyType", "Text"))))))
        self.assertEqual(answer.findtext("Oof/Get/OofState"), "1")
        self.assertEqual(answer.findtext("Oof/Get/OofMessage/ReplyMessage"), "Away")
        self.assertIsNotNone(answer.find("Oof/Get/OofMessage/AppliesToInternal"))


class FolderTests(CommandTestCase):
    """
    FolderSync and folder changes.
    """

    def test_initial(self) -> None:
        """
        Key 0 lists every folder as Add with EAS types, top level under 0.
        """
        self.setUpPhone()
        types = sorted(t for (_, _, t) in self.phone.folders.values())
        self.assertEqual(types, [2, 3, 4, 5, 6])
        self.assertTrue(all(parent == "0" for (parent, _, _) in self.phone.folders.values()))

    def test_changes(self) -> None:
        """
        Folders made, renamed and removed elsewhere reach the device as
        Add, Update, Delete; nothing changed keeps the key.
        """
        self.setUpPhone()
        key = self.phone.hierarchyKey
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Changes/Count"), "0")
        self.assertEqual(self.phone.hierarchyKey, key)
        work = self.successResultOf(self.mailbox.createFolder(None, "Work"))
        answer = self.drive(self.phone.folderSync())
        self.assertEqual(answer.findtext("Changes/Add/DisplayName"), "Work")
        self.assertNotEqual(self.phone.hierarchyKey, key)
        self.successResultOf(self.mailbox.updateFolder(work.id, None, "Job"))
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Changes/Update/DisplayName"), "Job")
        self.successResultOf(self.mailbox.deleteFolder(work.id))
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Changes/Delete/ServerId"), work.id)

    def test_badAndRepeatedKeys(self) -> None:
        """
        An unknown key is status 9; the previous key gets the lost answer
        again, byte for byte.
        """
        self.setUpPhone()
        self.phone.hierarchyKey, key = "nonsense-3", self.phone.hierarchyKey
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Status"), "9")
        self.phone.hierarchyKey = key
        self.successResultOf(self.mailbox.createFolder(None, "Work"))
        first = self.drive(self.phone.send("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", key))))
        again = self.drive(self.phone.send("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", key))))
        self.assertEqual(first, again)

    def test_createUpdateDelete(self) -> None:
        """
        The device's own folder changes land in the mailbox and are not
        echoed back; conflicts get their statuses.
        """
        self.setUpPhone()
        answer = self.drive(
            self.phone.call("FolderCreate", E("FolderHierarchy:FolderCreate", E("SyncKey", self.phone.hierarchyKey), E("ParentId", "0"), E("DisplayName", "Receipts"), E("Type", "12")))
        )
        self.assertEqual(answer.findtext("Status"), "1")
        self.phone.hierarchyKey = answer.findtext("SyncKey")
        created = answer.findtext("ServerId")
        names = {f.id: f.name for f in self.successResultOf(self.mailbox.folders())}
        self.assertEqual(names[created], "Receipts")
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Changes/Count"), "0")
        dup = self.drive(
            self.phone.call("FolderCreate", E("FolderHierarchy:FolderCreate", E("SyncKey", self.phone.hierarchyKey), E("ParentId", "0"), E("DisplayName", "receipts"), E("Type", "12")))
        )
        self.assertEqual(dup.findtext("Status"), "2")
        answer = self.drive(
            self.phone.call("FolderUpdate", E("FolderHierarchy:FolderUpdate", E("SyncKey", self.phone.hierarchyKey), E("ServerId", created), E("ParentId", "0"), E("DisplayName", "Bills")))
        )
        self.assertEqual(answer.findtext("Status"), "1")
        self.phone.hierarchyKey = answer.findtext("SyncKey")
        inbox = self.folderId(FolderType.INBOX)
        special = self.drive(
            self.phone.call("FolderDelete", E("FolderHierarchy:FolderDelete", E("SyncKey", self.phone.hierarchyKey), E("ServerId", inbox)))
        )
        self.assertEqual(special.findtext("Status"), "3")
        answer = self.drive(
            self.phone.call("FolderDelete", E("FolderHierarchy:FolderDelete", E("SyncKey", self.phone.hierarchyKey), E("ServerId", created)))
        )
        self.assertEqual(answer.findtext("Status"), "1")
        self.phone.hierarchyKey = answer.findtext("SyncKey")
        self.assertNotIn(created, {f.id for f in self.successResultOf(self.mailbox.folders())})
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Changes/Count"), "0")
        stale = self.drive(
            self.phone.call("FolderCreate", E("FolderHierarchy:FolderCreate", E("SyncKey", "old-1"), E("ParentId", "0"), E("DisplayName", "X"), E("Type", "12")))
        )
        self.assertEqual(stale.findtext("Status"), "9")


    def hierarchy(self, command: str, *children: Any) -> Any:
        return E(f"FolderHierarchy:{command}", E("SyncKey", self.phone.hierarchyKey), *children)

    def test_repeatedFolderCommands(self) -> None:
        """
        A folder command repeated with the same key (its answer was lost)
        gets the same answer byte for byte and changes nothing twice; the
        same key with another request is status 9, and FolderSync with
        that key is not answered with a folder command's reply.
        """
        self.setUpPhone()
        for command, children in [
            ("FolderCreate", [E("ParentId", "0"), E("DisplayName", "Receipts"), E("Type", "12")]),
            ("FolderUpdate", [E("ServerId", "@"), E("ParentId", "0"), E("DisplayName", "Bills")]),
            ("FolderDelete", [E("ServerId", "@")]),
        ]:
            for child in children:
                if child.text == "@":
                    child.value = created
            request = self.hierarchy(command, *children)
            first = self.drive(self.phone.send(command, request))
            again = self.drive(self.phone.send(command, request))
            self.assertEqual(first, again, command)
            answer = wbxml.decode(first[2])
            self.assertEqual(answer.findtext("Status"), "1", command)
            if command == "FolderCreate":
                created = answer.findtext("ServerId")
            other = self.drive(self.phone.call(command, self.hierarchy(command, E("ParentId", "0"), E("ServerId", created), E("DisplayName", "Other"))))
            self.assertEqual(other.findtext("Status"), "9", command)
            old = self.drive(self.phone.call("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", self.phone.hierarchyKey))))
            self.assertEqual(old.qname, "FolderHierarchy:FolderSync")
            self.assertEqual(old.findtext("Status"), "9")
            self.phone.hierarchyKey = answer.findtext("SyncKey")
            names = sorted(f.name for f in self.successResultOf(self.mailbox.folders()) if f.type == FolderType.MAIL)
            self.assertEqual(names, {"FolderCreate": ["Receipts"], "FolderUpdate": ["Bills"], "FolderDelete": []}[command])
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Changes/Count"), "0")

    def test_folderCommandsCutShort(self) -> None:
        """
        A crash after the mailbox changed but before the device's state
        did: the repeated FolderCreate answers 1 with the folder it made,
        the repeated FolderDelete answers 1; a folder the device already
        knows is still status 2, one it never knew still status 4.
        """
        self.setUpPhone()
        made = self.successResultOf(self.mailbox.createFolder(None, "Receipts"))
        answer = self.drive(self.phone.call("FolderCreate", self.hierarchy("FolderCreate", E("ParentId", "0"), E("DisplayName", "Receipts"), E("Type", "12"))))
        self.assertEqual((answer.findtext("Status"), answer.findtext("ServerId")), ("1", made.id))
        self.phone.hierarchyKey = answer.findtext("SyncKey")
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Changes/Count"), "0")
        known = self.drive(self.phone.call("FolderCreate", self.hierarchy("FolderCreate", E("ParentId", "0"), E("DisplayName", "Receipts"), E("Type", "12"))))
        self.assertEqual(known.findtext("Status"), "2")
        self.successResultOf(self.mailbox.deleteFolder(made.id))
        answer = self.drive(self.phone.call("FolderDelete", self.hierarchy("FolderDelete", E("ServerId", made.id))))
        self.assertEqual(answer.findtext("Status"), "1")
        self.phone.hierarchyKey = answer.findtext("SyncKey")
        self.assertEqual(self.drive(self.phone.folderSync()).findtext("Changes/Count"), "0")
        never = self.drive(self.phone.call("FolderDelete", self.hierarchy("FolderDelete", E("ServerId", made.id))))
        self.assertEqual(never.findtext("Status"), "4")


class SyncTests(CommandTestCase):
    """
    Sync of a mail collection.
    """

    def setUp(self) -> None:
        super().setUp()
        self.setUpPhone()
        self.inbox = self.folderId(FolderType.INBOX)

    def test_bootstrapAndPaging(self) -> None:
        """
        Key 0 answers with a key and no commands; then pages of at most
        WindowSize Adds, newest first, with MoreAvailable until done.
        """
        for n in range(25):
            self.deliver(f"message {n}")
        result = self.drive(self.phone.sync(self.inbox))
        self.assertIsNone(result[self.inbox].find("Commands"))
        result = self.drive(self.phone.sync(self.inbox, windowSize=10))
        adds = result[self.inbox].findall("Commands/Add")
        self.assertEqual(len(adds), 10)
        self.assertIsNotNone(result[self.inbox].find("MoreAvailable"))
        self.assertEqual(adds[0].findtext("ApplicationData/Email:Subject"), "message 24")
        self.drive(self.phone.syncAll(self.inbox, windowSize=10))
        self.assertEqual(
            sorted(s for s, _ in self.phone.mirror(self.inbox).values()), sorted(f"message {n}" for n in range(25))
        )
        # Nothing new: an empty answer.
        self.assertIsNone(self.drive(self.phone.call("Sync", E("AirSync:Sync", E("Collections", self.phone.collectionRequest(self.inbox))))))

    def test_serverChanges(self) -> None:
        """
        Flags changed and messages removed elsewhere arrive as Change and
        Delete.
        """
        uid = self.deliver("one")
        gone = self.deliver("two")
        self.drive(self.phone.syncAll(self.inbox))
        self.successResultOf(self.mailbox.setFlags(self.inbox, uid, [Flag.SEEN]))
        self.successResultOf(self.mailbox.delete(self.inbox, gone))
        result = self.drive(self.phone.sync(self.inbox))
        self.assertEqual(result[self.inbox].findtext("Commands/Change/ApplicationData/Email:Read"), "1")
        self.assertEqual(result[self.inbox].findtext("Commands/Delete/ServerId"), f"{self.inbox}:{gone}")
        self.assertEqual(self.phone.mirror(self.inbox), {f"{self.inbox}:{uid}": ("one", "1")})

    def test_clientChangesNotEchoed(self) -> None:
        """
        Read, flag and delete from the device land in the mailbox (delete
        as a move to Deleted Items) and are not sent back to it; another
        device of the user sees them.
        """
        read, flagged, deleted = self.deliver("read me"), self.deliver("flag me"), self.deliver("delete me")
        other = self.setUpPhone(self.newPhone("phone2"))
        self.drive(self.phone.syncAll(self.inbox))
        self.drive(other.syncAll(self.inbox))
        commands = [
            E("Change", E("ServerId", f"{self.inbox}:{read}"), E("ApplicationData", E("Email:Read", "1"))),
            E("Change", E("ServerId", f"{self.inbox}:{flagged}"), E("ApplicationData", E("Email:Flag", E("Status", "2"), E("FlagType", "Flag for follow up")))),
            E("Delete", E("ServerId", f"{self.inbox}:{deleted}")),
        ]
        result = self.drive(self.phone.sync(self.inbox, commands=commands))
        self.assertIsNone(result[self.inbox].find("Commands"))
        self.assertIsNone(result[self.inbox].find("Responses"))  # success is silent
        messages = self.messages()
        self.assertEqual(messages[read].flags, {Flag.SEEN})
        self.assertEqual(messages[flagged].flags, {Flag.FLAGGED})
        self.assertNotIn(deleted, messages)
        self.assertEqual(len(self.messages(FolderType.DELETED)), 1)
        # No echo on the next Sync of this device ...
        self.assertIsNone(self.drive(self.phone.call("Sync", E("AirSync:Sync", E("Collections", self.phone.collectionRequest(self.inbox))))))
        # ... while the other device hears all three.
        result = self.drive(other.sync(self.inbox))
        kinds = sorted(c.name for c in result[self.inbox].find("Commands").children)
        self.assertEqual(kinds, ["Change", "Change", "Delete"])

    def test_unknownItems(self) -> None:
        """
        Changes and deletes of unknown items answer status 8.
        """
        self.drive(self.phone.syncAll(self.inbox))
        result = self.drive(self.phone.sync(self.inbox, commands=[E("Delete", E("ServerId", f"{self.inbox}:999")), E("Change", E("ServerId", "bogus"), E("ApplicationData", E("Email:Read", "1")))]))
        statuses = [r.findtext("Status") for r in result[self.inbox].find("Responses").children]
        self.assertEqual(statuses, ["8", "8"])

    def test_lostResponse(self) -> None:
        """
        A device that repeats its previous key gets the same items again,
        and its client changes are not applied twice.
        """
        for n in range(3):
            self.deliver(f"m{n}")
        self.drive(self.phone.sync(self.inbox))
        keyBefore = self.phone.collections[self.inbox].key
        uid = next(iter(self.messages()))
        request = E("AirSync:Sync", E("Collections", self.phone.collectionRequest(self.inbox, commands=[E("Delete", E("ServerId", f"{self.inbox}:{uid}"))])))
        first = self.drive(self.phone.call("Sync", request))
        self.assertEqual(len(self.messages(FolderType.DELETED)), 1)
        again = self.drive(self.phone.call("Sync", request))
        self.assertEqual(len(self.messages(FolderType.DELETED)), 1)
        self.assertEqual(first.findtext("Collections/Collection/SyncKey"), again.findtext("Collections/Collection/SyncKey"))
        self.assertEqual(
            sorted(a.findtext("ServerId") for a in first.findall("Collections/Collection/Commands/Add")),
            sorted(a.findtext("ServerId") for a in again.findall("Collections/Collection/Commands/Add")),
        )
        self.assertNotEqual(keyBefore, first.findtext("Collections/Collection/SyncKey"))
        self.phone.applySync(again)
        self.assertEqual(len(self.phone.mirror(self.inbox)), 2)
        # An unknown key is status 3.
        self.phone.collections[self.inbox].key = "x-9"
        result = self.drive(self.phone.sync(self.inbox))
        self.assertEqual(result[self.inbox].findtext("Status"), "3")

    def test_unknownCollection(self) -> None:
        """
        A collection the mailbox does not have is status 12.
        """
        result = self.drive(self.phone.sync("nope"))
        self.assertEqual(result["nope"].findtext("Status"), "12")

    def test_filterWindow(self) -> None:
        """
        FilterType leaves old mail out; mail that ages out is SoftDeleted.
        """
        old = self.successResultOf(self.mailbox.append(self.inbox, message("old"), received=NOW - 10 * 86400))
        self.deliver("new")
        self.drive(self.phone.sync(self.inbox, filterType="3"))
        self.drive(self.phone.sync(self.inbox, filterType="3"))
        self.assertEqual([s for s, _ in self.phone.mirror(self.inbox).values()], ["new"])
        self.drive(self.phone.sync(self.inbox, filterType="0"))
        self.assertEqual(len(self.phone.mirror(self.inbox)), 2)
        result = self.drive(self.phone.sync(self.inbox, filterType="3"))
        self.assertEqual(result[self.inbox].findtext("Commands/SoftDelete/ServerId"), f"{self.inbox}:{old}")

    def test_waitValidation(self) -> None:
        """
        Wait and HeartbeatInterval together are status 4; out of range 14
        with the Limit.
        """
        collection = self.phone.collectionRequest(self.inbox)
        both = self.drive(self.phone.call("Sync", E("AirSync:Sync", E("Collections", collection), E("Wait", "5"), E("HeartbeatInterval", "300"))))
        self.assertEqual(both.findtext("Status"), "4")
        high = self.drive(self.phone.call("Sync", E("AirSync:Sync", E("Collections", collection), E("HeartbeatInterval", "4000"))))
        self.assertEqual((high.findtext("Status"), high.findtext("Limit")), ("14", "3540"))
        low = self.drive(self.phone.call("Sync", E("AirSync:Sync", E("Collections", collection), E("Wait", "0"))))
        self.assertEqual((low.findtext("Status"), low.findtext("Limit")), ("14", "1"))

    def test_emptyAndPartial(self) -> None:
        """
        An empty request reuses the cached one; with nothing cached it is
        status 13. Partial requests take the other collections from the
        cache.
        """
        fresh = self.newPhone("phone3")
        self.setUpPhone(fresh)
        self.assertEqual(self.drive(fresh.call("Sync")).findtext("Status"), "13")
        self.drive(self.phone.syncAll(self.inbox))
        self.deliver("later")
        answer = self.drive(self.phone.call("Sync"))
        self.phone.applySync(answer)
        self.assertIn("later", [s for s, _ in self.phone.mirror(self.inbox).values()])
        sent = self.folderId(FolderType.SENT)
        self.drive(self.phone.sync(sent))
        self.deliver("again")
        partial = self.drive(self.phone.call("Sync", E("AirSync:Sync", E("Collections", self.phone.collectionRequest(sent)), E("Partial"))))
        ids = [c.findtext("CollectionId") for c in partial.findall("Collections/Collection")]
        self.assertIn(self.inbox, ids)

    def test_fetch(self) -> None:
        """
        Sync Fetch returns the item's data in Responses.
        """
        uid = self.deliver("fetch me", body="the body")
        self.drive(self.phone.syncAll(self.inbox))
        result = self.drive(self.phone.sync(self.inbox, commands=[E("Fetch", E("ServerId", f"{self.inbox}:{uid}"))]))
        fetched = result[self.inbox].find("Responses/Fetch")
        self.assertEqual(fetched.findtext("Status"), "1")
        self.assertIn("the body", fetched.findtext("ApplicationData/AirSyncBase:Body/Data"))


class ItemTests(CommandTestCase):
    """
    GetItemEstimate, ItemOperations, MoveItems.
    """

    def setUp(self) -> None:
        super().setUp()
        self.setUpPhone()
        self.inbox = self.folderId(FolderType.INBOX)

    def test_estimate(self) -> None:
        """
        The estimate counts what the next Sync would send; an unprimed
        collection is status 3, a bad key 4, an unknown collection 2.
        """
        def estimate(collectionId: str, key: str) -> wbxml.Element:
            return self.drive(
                self.phone.call(
                    "GetItemEstimate",
                    E("GetItemEstimate:GetItemEstimate", E("Collections", E("Collection", E("AirSync:SyncKey", key), E("CollectionId", collectionId), E("AirSync:Options", E("FilterType", "0"))))),
                )
            ).find("Response")

        self.assertEqual(estimate(self.inbox, "0").findtext("Status"), "3")
        for n in range(4):
            self.deliver(f"m{n}")
        self.drive(self.phone.sync(self.inbox))
        response = estimate(self.inbox, self.phone.collections[self.inbox].key)
        self.assertEqual((response.findtext("Status"), response.findtext("Collection/Estimate")), ("1", "4"))
        self.assertEqual(estimate(self.inbox, "zz-1").findtext("Status"), "4")
        self.assertEqual(estimate("nope", "zz-1").findtext("Status"), "2")

    def fetch(self, *children: wbxml.Element, multipart: bool = False):
        self.phone.deviceType = "iPhone"
        document = E("ItemOperations:ItemOperations", E("Fetch", E("Store", "Mailbox"), *children))
        if multipart:
            return self.drive(self.phone.transport(
                f"Cmd=ItemOperations&User=x&DeviceId={self.phone.deviceId}&DeviceType=iPhone".encode(),
                {"MS-ASProtocolVersion": "14.1", "X-MS-PolicyKey": str(self.phone.policyKey), "Content-Type": "application/vnd.ms-sync.wbxml", "MS-ASAcceptMultiPart": "T"},
                wbxml.encode(document),
            ))
        return self.drive(self.phone.call("ItemOperations", document))

    def test_fetchBodyMimeAttachment(self) -> None:
        """
        ItemOperations fetches a whole body, the whole MIME message and an
        attachment by its FileReference (base64 Data, or a Range of it).
        """
        uid = self.deliver("with file", body="full text " * 100, attachment=("report.bin", b"\x00\x01binary" * 50))
        answer = self.fetch(E("AirSync:CollectionId", self.inbox), E("AirSync:ServerId", f"{self.inbox}:{uid}"), E("Options", E("AirSyncBase:BodyPreference", E("Type", "1"))))
        fetched = answer.find("Response/Fetch")
        self.assertEqual(fetched.findtext("Status"), "1")
        self.assertEqual(fetched.findtext("Properties/AirSyncBase:Body/Data").count("full text"), 100)
        reference = fetched.findtext("Properties/AirSyncBase:Attachments/Attachment/FileReference")
        self.assertIsNotNone(reference)
        answer = self.fetch(E("AirSync:CollectionId", self.inbox), E("AirSync:ServerId", f"{self.inbox}:{uid}"), E("Options", E("AirSync:MIMESupport", "2"), E("AirSyncBase:BodyPreference", E("Type", "4"))))
        mime = answer.findtext("Response/Fetch/Properties/AirSyncBase:Body/Data")
        self.assertIn("Subject: with file", mime)
        import base64

        answer = self.fetch(E("AirSyncBase:FileReference", reference))
        data = base64.b64decode(answer.findtext("Response/Fetch/Properties/Data"))
        self.assertEqual(data, b"\x00\x01binary" * 50)
        answer = self.fetch(E("AirSyncBase:FileReference", reference), E("Options", E("Range", "0-9")))
        self.assertEqual(base64.b64decode(answer.findtext("Response/Fetch/Properties/Data")), (b"\x00\x01binary" * 50)[:10])
        self.assertEqual(answer.findtext("Response/Fetch/Properties/Total"), "400")
        missing = self.fetch(E("AirSync:CollectionId", self.inbox), E("AirSync:ServerId", f"{self.inbox}:999"))
        self.assertEqual(missing.findtext("Response/Fetch/Status"), "6")

    def test_multipart(self) -> None:
        """
        With MS-ASAcceptMultiPart the attachment travels as a binary part.
        """
        import struct

        uid = self.deliver("with file", attachment=("a.bin", b"PAYLOAD"))
        body = self.fetch(E("AirSync:CollectionId", self.inbox), E("AirSync:ServerId", f"{self.inbox}:{uid}"))
        reference = body.findtext("Response/Fetch/Properties/AirSyncBase:Attachments/Attachment/FileReference")
        code, contentType, raw = self.fetch(E("AirSyncBase:FileReference", reference), multipart=True)
        self.assertEqual(contentType, "application/vnd.ms-sync.multipart")
        (count,) = struct.unpack("<i", raw[:4])
        self.assertEqual(count, 2)
        (offset0, length0, offset1, length1) = struct.unpack("<iiii", raw[4:20])
        tree = wbxml.decode(raw[offset0 : offset0 + length0])
        self.assertEqual(tree.findtext("Response/Fetch/Properties/Part"), "1")
        self.assertEqual(raw[offset1 : offset1 + length1], b"PAYLOAD")

    def test_emptyFolder(self) -> None:
        """
        EmptyFolderContents empties the folder.
        """
        trash = self.folderId(FolderType.DELETED)
        self.deliver("junk", folder=FolderType.DELETED)
        answer = self.drive(self.phone.call("ItemOperations", E("ItemOperations:ItemOperations", E("EmptyFolderContents", E("AirSync:CollectionId", trash)))))
        self.assertEqual(answer.findtext("Response/EmptyFolderContents/Status"), "1")
        self.assertEqual(self.messages(FolderType.DELETED), {})

    def test_moveItems(self) -> None:
        """
        A move answers 3 with the new id; neither folder echoes it back to
        the device; bad sources and destinations get 1 and 2.
        """
        uid = self.deliver("move me")
        sent = self.folderId(FolderType.SENT)
        self.drive(self.phone.syncAll(self.inbox))
        self.drive(self.phone.syncAll(sent))
        answer = self.drive(self.phone.call("MoveItems", E("Move:MoveItems", E("Move", E("SrcMsgId", f"{self.inbox}:{uid}"), E("SrcFldId", self.inbox), E("DstFldId", sent)))))
        self.assertEqual(answer.findtext("Response/Status"), "3")
        newId = answer.findtext("Response/DstMsgId")
        self.assertEqual(len(self.messages(FolderType.SENT)), 1)
        self.assertTrue(newId.startswith(sent + ":"))
        self.assertIsNone(self.drive(self.phone.call("Sync", E("AirSync:Sync", E("Collections", self.phone.collectionRequest(self.inbox), self.phone.collectionRequest(sent))))))
        bad = self.drive(self.phone.call("MoveItems", E("Move:MoveItems", E("Move", E("SrcMsgId", f"{self.inbox}:999"), E("SrcFldId", self.inbox), E("DstFldId", sent)), E("Move", E("SrcMsgId", newId), E("SrcFldId", sent), E("DstFldId", "nope")))))
        self.assertEqual([r.findtext("Status") for r in bad.findall("Response")], ["1", "2"])

    def test_moveItemsRepeated(self) -> None:
        """
        A device whose MoveItems answer was lost sends it again: it gets
        the same new id (the destination's state already holds the item,
        so no Sync would ever show it), and nothing moves twice.
        """
        uid = self.deliver("move me")
        sent = self.folderId(FolderType.SENT)
        self.drive(self.phone.syncAll(self.inbox))
        self.drive(self.phone.syncAll(sent))
        move = E("Move:MoveItems", E("Move", E("SrcMsgId", f"{self.inbox}:{uid}"), E("SrcFldId", self.inbox), E("DstFldId", sent)))
        first = self.drive(self.phone.call("MoveItems", move))
        again = self.drive(self.phone.call("MoveItems", move))
        self.assertEqual(again.findtext("Response/Status"), "3")
        self.assertEqual(again.findtext("Response/DstMsgId"), first.findtext("Response/DstMsgId"))
        self.assertEqual(len(self.messages(FolderType.SENT)), 1)
        self.assertEqual(self.messages(), {})
        # A move to another folder is not taken for the same one.
        other = self.drive(self.phone.call("MoveItems", E("Move:MoveItems", E("Move", E("SrcMsgId", f"{self.inbox}:{uid}"), E("SrcFldId", self.inbox), E("DstFldId", self.folderId(FolderType.DRAFTS))))))
        self.assertEqual(other.findtext("Response/Status"), "1")


class SendTests(CommandTestCase):
    """
    SendMail, SmartReply, SmartForward.
    """

    def setUp(self) -> None:
        super().setUp()
        self.setUpPhone()

    def test_sendMail(self) -> None:
        """
        The message goes to the submission without Bcc, from the user's
        address, and a copy (with Bcc) lands in Sent; the same ClientId
        again is 118 and is not sent twice.
        """
        mime = message("hi", to="bob@example.org", sender=USER).replace(b"To: bob", b"Bcc: secret@example.org\r\nTo: bob")
        self.assertIsNone(self.drive(self.phone.sendMail(mime, "c-1")))
        [(user, sender, recipients, raw)] = self.submission.sent
        self.assertEqual((user, sender), (USER, USER))
        self.assertEqual(sorted(recipients), ["bob@example.org", "secret@example.org"])
        self.assertNotIn(b"secret@", raw)
        [copy] = self.messages(FolderType.SENT).values()
        self.assertIn(Flag.SEEN, copy.flags)
        again = self.drive(self.phone.sendMail(mime, "c-1"))
        self.assertEqual(again.findtext("Status"), "118")
        self.assertEqual(len(self.submission.sent), 1)

    def test_sendCutShort(self) -> None:
        """
        A crash after the mail left but before the send was recorded (here:
        the last state write fails) makes the device send it again with
        the same ClientId: the submission is told it is a retry, the
        Message-ID the server added is the same, the Sent copy is not
        doubled, and a third try is 118.
        """
        failing = {"left": 1}
        save = self.store.save

        def crashingSave(user: str, device: str, values: Any) -> "Deferred[None]":
            if "sentids" in values and failing["left"]:
                failing["left"] -= 1
                from twisted.internet.defer import fail

                return fail(RuntimeError("killed"))
            return save(user, device, values)

        self.store.save = crashingSave  # type: ignore[method-assign]
        mime = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: once\r\n\r\nbody\r\n"
        first = Deferred.fromCoroutine(self.phone.sendMail(mime, "c-9"))
        self.failureResultOf(first, RuntimeError)
        self.clock.advance(30)
        self.assertIsNone(self.drive(self.phone.sendMail(mime, "c-9")))
        self.assertEqual(len(self.submission.sent), 2)
        self.assertEqual(self.submission.retries[0], None)
        self.assertEqual(self.submission.retries[1], NOW - 2)
        ids = [mail.summary(raw).messageId for _, _, _, raw in self.submission.sent]
        self.assertEqual(ids[0], ids[1])
        self.assertIsNotNone(ids[0])
        self.assertEqual(len(self.messages(FolderType.SENT)), 1)
        self.assertEqual(self.drive(self.phone.sendMail(mime, "c-9")).findtext("Status"), "118")
        self.assertEqual(len(self.submission.sent), 2)

    def test_failures(self) -> None:
        """
        No recipients is 119; a failing submission 120 and nothing saved.
        """
        self.assertEqual(self.drive(self.phone.sendMail(b"Subject: x\r\n\r\nbody", "c-2")).findtext("Status"), "119")
        self.submission.fail = RuntimeError("smarthost down")
        self.assertEqual(self.drive(self.phone.sendMail(message("x", to="bob@example.org"), "c-3")).findtext("Status"), "120")
        self.assertEqual(self.messages(FolderType.SENT), {})

    def test_legacyRawMime(self) -> None:
        """
        12.1 sends raw MIME with SaveInSent in the query.
        """
        phone = self.setUpPhone(self.newPhone("old", "12.1"))
        self.assertIsNone(self.drive(phone.sendMail(message("old style", to="bob@example.org"), "")))
        self.assertEqual(len(self.submission.sent), 1)
        self.assertEqual(len(self.messages(FolderType.SENT)), 1)

    def test_smartReply(self) -> None:
        """
        SmartReply quotes the original, marks it answered; an unknown
        source is 150.
        """
        inbox = self.folderId(FolderType.INBOX)
        uid = self.deliver("question", body="What time is it?")
        reply = message("Re: question", body="Noon.", to="bob@example.org", sender=USER)
        document = E("ComposeMail:SmartReply", E("ClientId", "r-1"), E("Source", E("FolderId", inbox), E("ItemId", f"{inbox}:{uid}")), E("Mime", reply))
        self.assertIsNone(self.drive(self.phone.call("SmartReply", document)))
        sent = self.submission.sent[0][3]
        self.assertIn(b"Noon.", sent)
        self.assertIn(b"What time is it?", sent)
        self.assertIn(Flag.ANSWERED, self.messages()[uid].flags)
        document = E("ComposeMail:SmartForward", E("ClientId", "r-2"), E("Source", E("FolderId", inbox), E("ItemId", f"{inbox}:999")), E("Mime", reply))
        self.assertEqual(self.drive(self.phone.call("SmartForward", document)).findtext("Status"), "150")


class SearchTests(CommandTestCase):
    """
    Search, Find, ResolveRecipients.
    """

    def setUp(self) -> None:
        super().setUp()
        self.setUpPhone()
        self.inbox = self.folderId(FolderType.INBOX)

    def test_mailbox(self) -> None:
        """
        Free text finds matching mail, newest first, with Range and Total;
        date bounds work.
        """
        self.deliver("Quarterly report", body="numbers inside")
        self.deliver("Lunch", body="pizza?")
        self.deliver("Report draft", body="more numbers")
        answer = self.drive(
            self.phone.call("Search", E("Search:Search", E("Store", E("Name", "Mailbox"), E("Query", E("And", E("AirSync:Class", "Email"), E("AirSync:CollectionId", self.inbox), E("FreeText", "numbers"))), E("Options", E("Range", "0-9")))))
        )
        store = answer.find("Response/Store")
        self.assertEqual(store.findtext("Status"), "1")
        self.assertEqual([r.findtext("Properties/Email:Subject") for r in store.findall("Result")], ["Report draft", "Quarterly report"])
        self.assertEqual((store.findtext("Range"), store.findtext("Total")), ("0-1", "2"))
        longId = store.findtext("Result/LongId")
        fetched = self.drive(self.phone.call("ItemOperations", E("ItemOperations:ItemOperations", E("Fetch", E("Store", "Mailbox"), E("Search:LongId", longId)))))
        self.assertEqual(fetched.findtext("Response/Fetch/Status"), "1")

    def test_gal(self) -> None:
        """
        The GAL searches the directory.
        """
        answer = self.drive(self.phone.call("Search", E("Search:Search", E("Store", E("Name", "GAL"), E("Query", "al"), E("Options", E("Range", "0-9"))))))
        self.assertEqual([r.findtext("Properties/Gal:EmailAddress") for r in answer.findall("Response/Store/Result")], ["alice@example.org", "albert@example.org"])

    def test_find(self) -> None:
        """
        Find (16.1) searches mail and answers with its property set.
        """
        phone = self.setUpPhone(self.newPhone("new", "16.1"))
        self.deliver("Invoice 42", body="please pay")
        answer = self.drive(
            phone.call("Find", E("Find:Find", E("SearchId", "s1"), E("ExecuteSearch", E("MailBoxSearchCriterion", E("Query", E("AirSync:Class", "Email"), E("AirSync:CollectionId", self.inbox), E("FreeText", "pay")), E("Options", E("Range", "0-4"))))))
        )
        self.assertEqual(answer.findtext("Status"), "1")
        result = answer.find("Response/Result")
        self.assertEqual(result.findtext("Properties/Email:Subject"), "Invoice 42")
        self.assertEqual(answer.findtext("Response/Total"), "1")

    def test_resolveRecipients(self) -> None:
        """
        Exact addresses resolve, prefixes may be ambiguous, strangers not.
        """
        answer = self.drive(self.phone.call("ResolveRecipients", E("ResolveRecipients:ResolveRecipients", E("To", "bob@example.org"), E("To", "al"), E("To", "zed"))))
        statuses = [r.findtext("Status") for r in answer.findall("Response")]
        self.assertEqual(statuses, ["1", "2", "4"])
        self.assertEqual(answer.find("Response").findtext("Recipient/EmailAddress"), "bob@example.org")


class OptionsTests(CommandTestCase):
    """
    What OPTIONS advertises.
    """

    def test_commands(self) -> None:
        """
        Exactly the implemented commands.
        """
        advertised = dict(self.dispatcher.optionsHeaders())["MS-ASProtocolCommands"].split(",")
        self.assertIn("Sync", advertised)
        self.assertIn("Find", advertised)
        self.assertNotIn("Ping", advertised)
        self.assertNotIn("MeetingResponse", advertised)


class DraftTests(CommandTestCase):
    """
    Drafts synced by 16.x devices.
    """

    version = "16.1"

    def test_draftLifecycle(self) -> None:
        """
        A draft added by the device gets a ServerId; edited, it keeps it
        and the mailbox holds the new text; sent with Email2:Send, it goes
        out, lands in Sent and leaves Drafts (the device hears the Delete).
        """
        self.setUpPhone()
        drafts = self.folderId(FolderType.DRAFTS)
        self.drive(self.phone.syncAll(drafts))

        def data(subject: str, *extra: wbxml.Element) -> wbxml.Element:
            return E(
                "ApplicationData",
                E("Email:To", "bob@example.org"),
                E("Email:Subject", subject),
                E("AirSyncBase:Body", E("Type", "1"), E("Data", f"text of {subject}")),
                *extra,
            )

        result = self.drive(self.phone.sync(drafts, commands=[E("Add", E("ClientId", "d1"), data("first"))]))
        add = result[drafts].find("Responses/Add")
        self.assertEqual(add.findtext("Status"), "1")
        serverId = add.findtext("ServerId")
        uid = serverId.split(":")[1]
        self.assertIn(b"text of first", self.successResultOf(self.mailbox.message(drafts, uid)))
        self.assertIn(Flag.DRAFT, self.messages(FolderType.DRAFTS)[uid].flags)

        self.drive(self.phone.sync(drafts, commands=[E("Change", E("ServerId", serverId), data("second"))]))
        self.assertEqual(list(self.messages(FolderType.DRAFTS)), [uid])
        self.assertIn(b"text of second", self.successResultOf(self.mailbox.message(drafts, uid)))
        self.assertEqual(self.submission.sent, [])

        result = self.drive(self.phone.sync(drafts, commands=[E("Change", E("ServerId", serverId), data("final", E("Email2:Send")))]))
        [(_, _, recipients, raw)] = self.submission.sent
        self.assertEqual(recipients, ["bob@example.org"])
        self.assertIn(b"text of final", raw)
        self.assertEqual(self.messages(FolderType.DRAFTS), {})
        self.assertEqual(len(self.messages(FolderType.SENT)), 1)
        # The same answer already tells the device the draft is gone.
        self.assertEqual(result[drafts].findtext("Commands/Delete/ServerId"), serverId)
        self.assertEqual(self.phone.collections[drafts].items, {})

    def test_olderVersionsCannotAdd(self) -> None:
        """
        Before 16.0 a device cannot add mail: status 6.
        """
        phone = self.setUpPhone(self.newPhone("old", "14.1"))
        drafts = self.folderId(FolderType.DRAFTS)
        self.drive(phone.syncAll(drafts))
        result = self.drive(phone.sync(drafts, commands=[E("Add", E("ClientId", "d1"), E("ApplicationData", E("Email:Subject", "x")))]))
        self.assertEqual(result[drafts].findtext("Responses/Add/Status"), "6")
        self.assertEqual(self.messages(FolderType.DRAFTS), {})
