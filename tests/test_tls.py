# -*- test-case-name: tests.test_tls -*-
"""
End to end over real TLS sockets on 127.0.0.1: the service as twistd
builds it, a client that verifies the self-signed certificate.
"""

from __future__ import annotations

import base64
from typing import Dict, Optional, Tuple

from twisted.internet.ssl import Certificate
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody
from twisted.web.http_headers import Headers

from directpush import certificate, tap, wbxml


class TLSEndToEndTests(TestCase):
    """
    OPTIONS, 401s and a base64-form POST through a real TLS listener.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        data = FilePath(self.mktemp())
        key, cert, _ = certificate.ensureSelfSigned(data.child("tls"), "localhost")
        listen = f"ssl:0:interface=127.0.0.1:privateKey={key.path}:certKey={cert.path}"
        config = tap.configFromOptions(self._options(data, listen))
        with capturedLogs() as events:
            self.service = tap.buildService(config, reactor)
        self.password = [e["password"] for e in events if "password" in e][0]
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        [listener] = [s for s in self.service if isinstance(s, tap.ListenService)]
        self.port = listener._port.getHost().port
        # Trust exactly the server's own certificate, and check the name.
        trust = Certificate.loadPEM(cert.getContent())
        self.agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=trust))

    def _options(self, data: FilePath, listen: str) -> tap.Options:
        o = tap.Options()
        o.parseOptions(["--data", data.path, "--listen", listen])
        return o

    async def request(
        self,
        method: bytes,
        query: bytes = b"",
        user: Optional[bytes] = b"demo",
        password: Optional[bytes] = None,
        headers: Optional[Dict[bytes, bytes]] = None,
    ) -> Tuple[int, Headers, bytes]:
        url = f"https://localhost:{self.port}/Microsoft-Server-ActiveSync".encode() + query
        h = Headers({k: [v] for k, v in (headers or {}).items()})
        if user is not None:
            secret = password if password is not None else self.password.encode()
            h.addRawHeader(b"Authorization", b"Basic " + base64.b64encode(user + b":" + secret))
        response = await self.agent.request(method, url, h)
        body = await readBody(response)
        return response.code, response.headers, body

    async def test_options(self) -> None:
        """
        OPTIONS with the demo user's credentials shows both MS-AS headers.
        """
        code, headers, body = await self.request(b"OPTIONS")
        self.assertEqual(code, 200)
        self.assertEqual(
            headers.getRawHeaders(b"MS-ASProtocolVersions"), [b"12.1,14.0,14.1,16.0,16.1"]
        )
        [commands] = headers.getRawHeaders(b"MS-ASProtocolCommands")
        self.assertEqual(
            commands.split(b","),
            [
                b"Sync", b"SendMail", b"SmartForward", b"SmartReply", b"GetAttachment",
                b"FolderSync", b"FolderCreate", b"FolderDelete", b"FolderUpdate",
                b"MoveItems", b"GetItemEstimate", b"Search", b"Settings", b"Ping",
                b"ItemOperations", b"Provision", b"ResolveRecipients", b"Find",
            ],
        )

    async def test_unauthorized(self) -> None:
        """
        No credentials, or wrong ones: 401 with a Basic challenge.
        """
        for user, password in ((None, None), (b"demo", b"wrong-password"), (b"nobody", b"x")):
            code, headers, _ = await self.request(b"OPTIONS", user=user, password=password)
            self.assertEqual(code, 401)
            self.assertEqual(headers.getRawHeaders(b"WWW-Authenticate"), [b'basic realm="directpush"'])

    async def test_base64Post(self) -> None:
        """
        A POST in the base64 query form is parsed and reaches its command:
        a first Ping without a body is told its parameters are missing
        (Ping status 3); a broken blob is 400.
        """
        blob = base64.b64encode(bytes([141, 18, 9, 4, 4]) + b"dev1" + b"\x00" + b"\x06iPhone")
        code, _, body = await self.request(b"POST", b"?" + blob)
        self.assertEqual(code, 200)
        self.assertEqual(wbxml.decode(body), wbxml.E("Ping:Ping", wbxml.E("Status", "3")))
        code, _, body = await self.request(b"POST", b"?jAAJBAp2")
        self.assertEqual(code, 400)
        self.assertIn(b"truncated", body)
