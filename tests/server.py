"""
The service as twistd builds it, started in the test's reactor behind a
real TLS listener on 127.0.0.1, and an HTTPS transport for L{Phone}s that
verifies its certificate.
"""

from __future__ import annotations

from io import BytesIO
from typing import Dict, List, Optional, Tuple

from twisted.internet.ssl import Certificate
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from directpush import certificate, tap

from .phone import Transport, basicAuth


class RunningServer:
    """
    C{tap.buildService} on the global reactor (tests only), with C{DATA}
    prepared by the caller.
    """

    def __init__(self, case: TestCase, data: FilePath, options: List[str]) -> None:
        from twisted.internet import reactor

        key, cert, _ = certificate.ensureSelfSigned(data.child("tls"), "localhost")
        parsed = tap.Options()
        parsed.parseOptions(
            ["--data", data.path, "--listen", f"ssl:0:interface=127.0.0.1:privateKey={key.path}:certKey={cert.path}"]
            + options
        )
        with capturedLogs():
            self.service = tap.buildService(tap.configFromOptions(parsed), reactor)
        self.service.privilegedStartService()
        self.service.startService()
        case.addCleanup(self.service.stopService)
        [listener] = [s for s in self.service if isinstance(s, tap.ListenService)]
        self.port = listener._port.getHost().port
        self.agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert.getContent())))

    @property
    def url(self) -> bytes:
        return f"https://localhost:{self.port}/Microsoft-Server-ActiveSync".encode()

    def transport(self, user: str, password: str) -> Transport:
        """
        POSTs as C{user} over HTTPS, for a L{Phone}.
        """

        async def send(query: bytes, headers: Dict[str, str], body: bytes) -> Tuple[int, Optional[str], bytes]:
            h = Headers({k.encode(): [v.encode()] for k, v in headers.items()})
            h.addRawHeader(b"Authorization", basicAuth(user, password).encode())
            producer = FileBodyProducer(BytesIO(body)) if body else None
            response = await self.agent.request(b"POST", self.url + b"?" + query, h, producer)
            data = await readBody(response)
            contentType = response.headers.getRawHeaders(b"Content-Type", [None])[0]
            return response.code, contentType.decode() if contentType else None, data

        return send
