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
from io import BytesIO
from typing import Dict, Optional, Tuple

from twisted.internet import defer
from twisted.internet.ssl import Certificate
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from directpush import auth, certificate, tap
from directpush.wbxml import E

from .phone import Phone, Transport, basicAuth

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
        from twisted.internet import reactor

        self.data = FilePath(self.mktemp())
        self.data.makedirs()
        auth.writePasswd(self.data.child("users"), {USER: "{PLAIN}" + PASSWORD})
        key, cert, _ = certificate.ensureSelfSigned(self.data.child("tls"), "localhost")
        options = tap.Options()
        options.parseOptions(
            [
                "--data", self.data.path,
                "--listen", f"ssl:0:interface=127.0.0.1:privateKey={key.path}:certKey={cert.path}",
                "--policy", "none",
                "--render-workers", "0",
            ]
        )
        with capturedLogs():
            self.service = tap.buildService(tap.configFromOptions(options), reactor)
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        [listener] = [s for s in self.service if isinstance(s, tap.ListenService)]
        self.port = listener._port.getHost().port
        self.agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert.getContent())))

    def transport(self) -> Transport:
        async def send(query: bytes, headers: Dict[str, str], body: bytes) -> Tuple[int, Optional[str], bytes]:
            h = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
            h.addRawHeader(b"Authorization", basicAuth(USER, PASSWORD).encode())
            url = f"https://localhost:{self.port}/Microsoft-Server-ActiveSync?".encode() + query
            producer = FileBodyProducer(BytesIO(body)) if body else None
            response = await self.agent.request(b"POST", url, h, producer)
            data = await readBody(response)
            contentType = response.headers.getRawHeaders(b"Content-Type", [None])[0]
            return response.code, contentType.decode() if contentType else None, data

        return send

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
