"""
The push tester end to end: C{twistd directpush} and
C{python -m directpush.device} as real processes; a message delivered
into the maildir the way an MDA does shows up as a C{changes} and a
C{new-mail} event within one second.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from twisted.internet import defer, protocol
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from directpush import auth, certificate

from .test_e2e_push import DELIVER

USER = "frank@example.org"
PASSWORD = "Tester-Of-Push-3"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Lines(protocol.ProcessProtocol):
    """
    Collects a process's stdout lines (with the time each arrived) and its
    stderr.
    """

    def __init__(self) -> None:
        self.lines: List[tuple] = []
        self.buffer = b""
        self.err = b""
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.lines.append((time.monotonic(), line.decode()))

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PushTesterEndToEndTests(TestCase):
    timeout = 90

    async def _waitFor(self, test: Any, seconds: float, what: str) -> None:
        from twisted.internet import reactor

        deadline = time.monotonic() + seconds
        while not test():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}")
            await deferLater(reactor, 0.02, lambda: None)

    def _spawn(self, args: List[str]) -> _Lines:
        from twisted.internet import reactor

        lines = _Lines()
        env = dict(os.environ, PYTHONPATH=ROOT)
        process = reactor.spawnProcess(lines, sys.executable, [sys.executable, *args], env=env, path=ROOT)

        async def stop() -> None:
            if not lines.ended.called:
                try:
                    process.signalProcess("TERM")
                except Exception:
                    pass
                await lines.ended

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))
        return lines

    def _events(self, lines: _Lines) -> List[tuple]:
        return [(when, json.loads(line)) for when, line in lines.lines if line.startswith("{")]

    async def test_deliveryPrintsChangesAndNewMail(self) -> None:
        """
        The tester sets up, Pings, and prints C{changes} and C{new-mail}
        within one second of a delivery into the maildir.
        """
        data = FilePath(self.mktemp())
        data.makedirs()
        auth.writePasswd(data.child("users"), {USER: "{PLAIN}" + PASSWORD})
        key, cert, _ = certificate.ensureSelfSigned(data.child("tls"), "localhost")
        passwordFile = data.child("password")
        passwordFile.setContent(PASSWORD.encode() + b"\n")
        port = _freePort()
        server = self._spawn(
            [
                "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "directpush",
                "--data", data.path,
                "--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key.path}:certKey={cert.path}",
                "--policy", "none",
                "--render-workers", "0",
            ]
        )

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        await self._waitFor(lambda: listening() or server.ended.called, 30, "the server to listen")
        self.assertFalse(server.ended.called, server.err.decode(errors="replace"))
        tester = self._spawn(
            [
                "-m", "directpush.device",
                "--server", f"localhost:{port}",
                "--user", USER,
                "--password-file", passwordFile.path,
                "--ca-file", cert.path,
                "--initial-heartbeat", "300",
                "--min-heartbeat", "120",
                "--max-heartbeat", "600",
                "--heartbeat-step", "60",
            ]
        )

        def pinging() -> bool:
            return any(e["event"] == "ping" for _, e in self._events(tester)) or tester.ended.called

        await self._waitFor(pinging, 30, "the first Ping")
        self.assertFalse(tester.ended.called, tester.err.decode(errors="replace"))
        # Let the server hold the Ping.
        from twisted.internet import reactor

        await deferLater(reactor, 0.5, lambda: None)
        maildir = data.child("mail").child(USER).path
        subprocess.run([sys.executable, "-c", DELIVER, maildir, "Seen by the tester"], check=True, timeout=30)
        delivered = time.monotonic()

        def kinds() -> Dict[str, Optional[float]]:
            seen: Dict[str, Optional[float]] = {}
            for when, event in self._events(tester):
                seen.setdefault(event["event"], when)
            return seen

        await self._waitFor(lambda: "new-mail" in kinds(), 10, "the new-mail event")
        events = [e for _, e in self._events(tester)]
        self.assertIn({"event": "changes", "folders": ["Inbox"]}, events)
        self.assertIn({"event": "new-mail", "folder": "Inbox", "subject": "Seen by the tester"}, events)
        seen = kinds()
        self.assertLess(seen["changes"] - delivered, 1.0)
        self.assertLess(seen["new-mail"] - delivered, 1.0)
        self.assertNotIn("error", seen)
        self.assertNotIn(PASSWORD, tester.err.decode(errors="replace") + "".join(l for _, l in tester.lines))
