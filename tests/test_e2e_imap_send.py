# -*- test-case-name: tests.test_e2e_imap_send -*-
"""
Sending through the IMAP bridge end to end: a phone's SendMail leaves by
the smarthost (an SMTP server on 127.0.0.1 that hands each message to
Dovecot's LDA, as an MTA would), reaches the recipient's Inbox, and its
Sent copy is APPENDed to the sender's Sent folder, where the phone's next
Sync finds it.
"""

from __future__ import annotations

import email.message
import email.utils
import imaplib
import ssl
from typing import Any, List, Tuple

from twisted.internet import defer, threads
from twisted.internet.protocol import Factory
from twisted.mail import smtp
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from directpush import certificate

from .dovecot import SKIP, Dovecot
from .phone import Phone
from .server import RunningServer

SENDER = "erin@example.org"
RECIPIENT = "bob@example.org"
PASSWORD = "Imap-Send-4"


@implementer(smtp.IMessage)
class _Message:
    def __init__(self, relay: "_Relay", recipient: str) -> None:
        self.relay = relay
        self.recipient = recipient
        self.lines: List[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> "defer.Deferred[None]":
        raw = b"\r\n".join(self.lines) + b"\r\n"
        self.relay.received.append((self.recipient, raw))
        # The LDA is a blocking subprocess: off the reactor thread.
        return threads.deferToThread(self.relay.dovecot.deliver, self.recipient, raw)

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _Relay:
    """
    A loopback MTA for the test: accepts any sender, delivers to Dovecot's
    users with its LDA.
    """

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self.received: List[Tuple[str, bytes]] = []

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: from directpush by test-relay"

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: smtp.User) -> Any:
        address = str(user.dest)
        if address not in self.dovecot.users:
            raise smtp.SMTPBadRcpt(user)
        return lambda: _Message(self, address)


class IMAPSendTests(TestCase):
    skip = SKIP
    timeout = 120

    def setUp(self) -> None:
        from twisted.internet import reactor

        tls = FilePath(self.mktemp())
        key, cert, _ = certificate.ensureSelfSigned(tls, "localhost")
        self.cert = cert
        self.dovecot = Dovecot(specialUse=True, certificate=cert.path, key=key.path)
        self.dovecot.addUser(SENDER, PASSWORD)
        self.dovecot.addUser(RECIPIENT, PASSWORD)
        self.dovecot.start()
        self.addCleanup(self.dovecot.cleanup)
        self.relay = _Relay(self.dovecot)
        factory = Factory.forProtocol(smtp.ESMTP)

        def buildProtocol(addr: Any) -> smtp.ESMTP:
            protocol = Factory.buildProtocol(factory, addr)
            protocol.delivery = self.relay
            return protocol

        factory.buildProtocol = buildProtocol  # type: ignore[method-assign]
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        data = FilePath(self.mktemp())
        data.makedirs()
        self.server = RunningServer(
            self,
            data,
            [
                "--backend", "imap",
                "--imap", f"tls:localhost:{self.dovecot.tlsPort}",
                "--imap-ca-file", cert.path,
                "--smtp", f"tcp:127.0.0.1:{listening.getHost().port}",
                "--policy", "none",
                "--render-workers", "0",
            ],
        )

    def search(self, user: str, folder: str, criteria: str) -> List[bytes]:
        context = ssl.create_default_context(cafile=self.cert.path)
        client = imaplib.IMAP4_SSL("localhost", self.dovecot.tlsPort, ssl_context=context)
        try:
            client.login(user, PASSWORD)
            client.select(folder)
            return client.search(None, criteria)[1][0].split()
        finally:
            client.logout()

    async def test_sendMail(self) -> None:
        """
        SendMail at 14.1 and 16.1 with SaveInSentItems: the recipient's
        Inbox has each mail once, the sender's Sent folder has each copy
        once (seen), and the phone's Sync of Sent lists both; the same
        ClientId again is 118 and nothing more leaves.
        """
        for version in ("14.1", "16.1"):
            phone = Phone(self.server.transport(SENDER, PASSWORD), deviceId=f"sender{version[:2]}", version=version)
            self.assertEqual((await phone.folderSync()).findtext("Status"), "1")
            sent = phone.folderOfType(5)
            await phone.syncAll(sent)
            msg = email.message.EmailMessage()
            msg["From"] = f"Erin <{SENDER}>"
            msg["To"] = f"Bob <{RECIPIENT}>"
            msg["Subject"] = f"Sent at {version}"
            msg["Date"] = email.utils.formatdate()
            msg.set_content("Through the bridge and the smarthost.\n")
            self.assertIsNone(await phone.sendMail(msg.as_bytes(), f"send-{version}"))
            again = await phone.sendMail(msg.as_bytes(), f"send-{version}")
            self.assertEqual(again.findtext("Status"), "118")
            self.assertEqual(len(self.search(RECIPIENT, "INBOX", f'SUBJECT "Sent at {version}"')), 1)
            self.assertEqual(len(self.search(SENDER, "Sent", f'SUBJECT "Sent at {version}" SEEN')), 1)
            result = await phone.sync(sent)
            subjects = [subject for subject, _ in phone.mirror(sent).values()]
            self.assertIn(f"Sent at {version}", subjects, result)
        self.assertEqual([r for r, _ in self.relay.received], [RECIPIENT, RECIPIENT])
