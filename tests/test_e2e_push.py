# -*- test-case-name: tests.test_e2e_push -*-
"""
Direct Push end to end: the service as twistd builds it behind a real TLS
socket; a Ping waits; another process delivers a message into the maildir
the way an MDA does; the Ping answers 2 naming the Inbox and the next Sync
brings the message.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from twisted.internet import defer
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from directpush import auth
from directpush.wbxml import E

from .phone import Phone, Transport
from .server import RunningServer

USER = "carol@example.org"
PASSWORD = "Push-Me-7"

# What an MDA does: write into tmp/, then rename into new/.
DELIVER = textwrap.dedent(
    """
    import os, sys, time
    maildir, subject = sys.argv[1], sys.argv[2]
    name = "%d.P%d.mda" % (time.time(), os.getpid())
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(b"From: dave@example.org\\r\\nTo: carol@example.org\\r\\nSubject: " + subject.encode() + b"\\r\\n\\r\\nHi\\r\\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(maildir, "new", name))
    """
)


class PushEndToEndTests(TestCase):
    """
    A Ping woken by an outside delivery.
    """

    timeout = 60

    def setUp(self) -> None:
        self.data = FilePath(self.mktemp())
        self.data.makedirs()
        auth.writePasswd(self.data.child("users"), {USER: "{PLAIN}" + PASSWORD})
        self.server = RunningServer(self, self.data, ["--policy", "none", "--render-workers", "0"])
        self.service = self.server.service

    def transport(self) -> Transport:
        return self.server.transport(USER, PASSWORD)

    async def test_deliveryWakesPing(self) -> None:
        """
        A message delivered by another process answers the waiting Ping
        with 2 naming the Inbox; the next Sync returns it.
        """
        from twisted.internet import reactor

        phone = Phone(self.transport(), deviceId="pushphone")
        self.assertEqual((await phone.folderSync()).findtext("Status"), "1")
        inbox = phone.folderOfType(2)
        await phone.syncAll(inbox)
        ping = defer.Deferred.fromCoroutine(
            phone.call(
                "Ping",
                E("Ping:Ping", E("HeartbeatInterval", "600"), E("Folders", E("Folder", E("Id", inbox), E("Class", "Email")))),
            )
        )
        # Deliver only once the server holds the Ping.
        for _ in range(500):
            if self.service.hub.waiting:
                break
            await _sleep(reactor, 0.01)
        self.assertEqual(self.service.hub.waiting, 1)
        self.assertNoResult(ping)
        maildir = self.data.child("mail").child(USER).path
        subprocess.run([sys.executable, "-c", DELIVER, maildir, "Pushed to you"], check=True, timeout=30)
        answer = await ping
        self.assertEqual(answer.findtext("Status"), "2")
        self.assertEqual([f.text for f in answer.findall("Folders/Folder")], [inbox])
        result = await phone.sync(inbox)
        self.assertEqual(result[inbox].findtext("Commands/Add/ApplicationData/Email:Subject"), "Pushed to you")


def _sleep(reactor, seconds: float) -> "defer.Deferred[None]":
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
