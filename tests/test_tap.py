# -*- test-case-name: tests.test_tap -*-
"""
Tests for L{directpush.tap}, L{directpush.certificate} and the twistd
plugin.
"""

from __future__ import annotations

import gc
import io
import os
import re
import socket
import subprocess
import sys
from typing import List

from cryptography import x509
from twisted.application.service import IServiceMaker
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.plugin import IPlugin, getPlugins
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from directpush import auth, certificate, tap

from .util import assertProvides

ROOT = FilePath(__file__).parent().parent()


def options(*argv: str) -> tap.Options:
    o = tap.Options()
    o.parseOptions(list(argv))
    return o


class OptionsTests(SynchronousTestCase):
    """
    C{twistd directpush} options.
    """

    def test_defaults(self) -> None:
        """
        With no options: ./directpush-data, DATA/users, no --listen (the
        self-signed HTTPS default), the default body limit.
        """
        config = tap.configFromOptions(options())
        self.assertEqual(config.data.path, os.path.abspath("directpush-data"))
        self.assertEqual(config.users, config.data.child("users"))
        self.assertEqual(config.listen, [])
        self.assertEqual(config.maxBody, 32 * 1024 * 1024)

    def test_listenRepeats(self) -> None:
        """
        --listen may be given several times.
        """
        config = tap.configFromOptions(options("--listen", "tcp:1", "-l", "tcp:2", "--users", "/u"))
        self.assertEqual(config.listen, ["tcp:1", "tcp:2"])
        self.assertEqual(config.users.path, "/u")

    def test_badOptions(self) -> None:
        """
        Bad options are kept as one message for makeService to report.
        """
        for argv, words in [
            (["--bogus"], "--bogus not recognized"),
            (["--max-body", "x"], "whole number"),
            (["--max-body", "10"], "at least 1024"),
            (["--backend", "mbox"], "'maildir' or 'imap'"),
            (["--backend", "imap"], "needs --imap"),
            (["--malloc-arenas", "x"], "--malloc-arenas must be"),
            (["--malloc-arenas", "-1"], "--malloc-arenas must be"),
            (["--spill-rows", "0"], "--spill-rows must be"),
            (["--malloc-mmap-threshold", "100"], "--malloc-mmap-threshold must be"),
            (["--malloc-mmap-threshold", "x"], "--malloc-mmap-threshold must be"),
            (["--spill-rows", "many"], "--spill-rows must be"),
        ]:
            e = self.assertRaises(tap.StartupError, tap.configFromOptions, options(*argv))
            self.assertIn(words, str(e))

    def test_helpDocumentsEverything(self) -> None:
        """
        Every option has help text.
        """
        text = " ".join(str(tap.Options()).split())
        for name in ("--listen", "--data", "--users", "--max-body", "--hostname", "--mail-root", "--domain", "--policy", "--smtp", "--smtp-ca-file", "--smtp-user", "--smtp-password-file", "--smtp-allow-plaintext", "--backend", "--imap", "--imap-ca-file", "--imap-allow-plaintext"):
            self.assertIn(name, text)
        self.assertIn("TLS-terminating proxy", text)


_ARENAS = """
import ctypes, sys, threading
from directpush import tap
if sys.argv[1] != "0" and not tap.limitMallocArenas(int(sys.argv[1])):
    sys.exit(3)
together = threading.Barrier(8)
def work():
    kept = [bytearray(4096) for _ in range(500)]  # malloc'd in this thread
    together.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
sys.stderr.flush()
ctypes.CDLL(None).malloc_stats()
"""


def _mallocStats(case: SynchronousTestCase, script: str, value: int, unset: str) -> bytes:
    """
    What glibc's malloc_stats() prints after C{script} ran with C{value},
    in a fresh process without the environment variable C{unset}.
    """
    env = {k: v for k, v in os.environ.items() if k != unset}
    env["PYTHONPATH"] = ROOT.path
    run = subprocess.run([sys.executable, "-c", script, str(value)], env=env, capture_output=True, timeout=60)
    if run.returncode == 3:
        raise SkipTest("not glibc: mallopt is not there")
    case.assertEqual(run.returncode, 0, run.stderr)
    return run.stderr


class MallocArenaTests(SynchronousTestCase):
    """
    L{tap.limitMallocArenas} and C{--malloc-arenas}.
    """

    def arenas(self, limit: int) -> int:
        return _mallocStats(self, _ARENAS, limit, "MALLOC_ARENA_MAX").count(b"Arena ")

    def test_threadsShareOneArena(self) -> None:
        """
        Eight threads allocating at once get arenas of their own, unless
        the limit is one: then they share the main one.
        """
        if not sys.platform.startswith("linux"):
            raise SkipTest("glibc's malloc is Linux's")
        self.assertGreater(self.arenas(0), 2)
        self.assertEqual(self.arenas(1), 1)

    def test_option(self) -> None:
        """
        One arena by default; 0 leaves glibc's default.
        """
        self.assertEqual(options()["malloc-arenas"], 1)
        self.assertEqual(options("--malloc-arenas", "0")["malloc-arenas"], 0)


_MMAP = """
import ctypes, sys
from directpush import tap
if sys.argv[1] != "0" and not tap.fixMmapThreshold(int(sys.argv[1])):
    sys.exit(3)
# A block freed raises glibc's own threshold to its size; then blocks of
# 64 KiB, kept, as a growing buffer would be.
del bytearray(200 * 1024)[:]
kept = [bytearray(64 * 1024) for _ in range(100)]
sys.stderr.flush()
ctypes.CDLL(None).malloc_stats()
"""


class MallocMmapThresholdTests(SynchronousTestCase):
    """
    L{tap.fixMmapThreshold} and C{--malloc-mmap-threshold}.
    """

    def mapped(self, threshold: int) -> int:
        if not sys.platform.startswith("linux"):
            raise SkipTest("glibc's malloc is Linux's")
        stats = _mallocStats(self, _MMAP, threshold, "MALLOC_MMAP_THRESHOLD_")
        found = re.search(rb"max mmap regions = +(\d+)", stats)
        assert found is not None, stats
        return int(found.group(1))

    def test_blocksMapped(self) -> None:
        """
        With a fixed threshold of 32 KiB, most of 100 blocks of 64 KiB
        get mappings of their own (those the heap's free top can hold do
        not); with glibc's rising threshold they all come from the heap.
        """
        self.assertGreater(self.mapped(32768), self.mapped(0) + 50)

    def test_option(self) -> None:
        """
        32 KiB by default; 0 leaves glibc's default.
        """
        self.assertEqual(options()["malloc-mmap-threshold"], 32768)
        self.assertEqual(options("--malloc-mmap-threshold", "0")["malloc-mmap-threshold"], 0)


class BuildServiceTests(SynchronousTestCase):
    """
    L{tap.buildService} on a MemoryReactor.
    """

    def setUp(self) -> None:
        self.data = FilePath(self.mktemp())
        self.reactor = MemoryReactor()

    def build(self, *argv: str):
        # No render workers: they are real processes, and a MemoryReactor
        # cannot hear that they stopped.
        config = tap.configFromOptions(
            options("--data", self.data.path, "--hostname", "mail.test", "--render-workers", "0", *argv)
        )
        with capturedLogs() as events:
            service = tap.buildService(config, self.reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return service, events

    def test_firstStart(self) -> None:
        """
        A first start makes the data directory (private), a users file with
        'demo' whose password is logged once, and a self-signed certificate
        for HTTPS on 8443, its fingerprint logged.
        """
        _, events = self.build()
        self.assertEqual(self.data.getPermissions().shorthand(), "rwx------")
        [created] = [e for e in events if "password" in e]
        users = auth.parsePasswd(self.data.child("users").getContent().decode())
        self.assertTrue(auth.verifyPassword(created["password"], users["demo"]))
        [(port, site, context, _, interface)] = self.reactor.sslServers
        self.assertEqual((port, interface), (8443, ""))
        cert = self.data.child("tls").child("cert.pem").getContent()
        [logged] = [e["fingerprint"] for e in events if "fingerprint" in e]
        self.assertEqual(logged, certificate.fingerprint(cert))
        self.assertEqual(self.data.child("tls").child("key.pem").getPermissions().shorthand(), "rw-------")

        # A second start keeps users and certificate and logs no password.
        _, events = self.build()
        self.assertFalse([e for e in events if "password" in e])
        self.assertEqual(self.data.child("tls").child("cert.pem").getContent(), cert)
        self.assertEqual(auth.parsePasswd(self.data.child("users").getContent().decode()), users)

    def test_certificateNames(self) -> None:
        """
        The certificate names localhost, 127.0.0.1, ::1 and the host name.
        """
        self.build()
        cert = x509.load_pem_x509_certificate(self.data.child("tls").child("cert.pem").getContent())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["localhost", "mail.test"])
        self.assertEqual(
            [str(a) for a in san.get_values_for_type(x509.IPAddress)], ["127.0.0.1", "::1"]
        )

    def test_tlsReleasesIdleBuffers(self) -> None:
        """
        TLS listeners let OpenSSL free idle connections' buffers. This pins
        the private attribute of Twisted's TLS endpoint that reaches the
        context factory: if Twisted renames it, this fails.
        """
        from OpenSSL import SSL

        service, _ = self.build()
        [listener] = [s for s in service if isinstance(s, tap.ListenService)]
        context = listener.endpoint._sslContextFactory.getContext()
        self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)

    def test_listen(self) -> None:
        """
        Explicit endpoints replace the default; no certificate is made.
        """
        self.build("--listen", "tcp:8080:interface=127.0.0.1", "--listen", "tcp:8081")
        self.assertEqual(
            [(p, i) for p, _, _, i in self.reactor.tcpServers], [(8080, "127.0.0.1"), (8081, "")]
        )
        self.assertEqual(self.reactor.sslServers, [])
        self.assertFalse(self.data.child("tls").exists())

    def test_badEndpoint(self) -> None:
        """
        Unknown endpoint types and unreadable certificates are one-line
        startup errors.
        """
        for listen, words in [
            ("nonsense:1", "Unknown endpoint type"),
            ("ssl:8443:privateKey=/nonexistent/key.pem", "No such file"),
        ]:
            e = self.assertRaises(tap.StartupError, self.build, "--listen", listen)
            self.assertIn(words, str(e))

    def test_imapBackend(self) -> None:
        """
        With --backend imap there is no users file, the checker logs in to
        IMAP, and the backend stops with the service.
        """
        from directpush.backends.imap import IMAPBackend

        service, _ = self.build("--backend", "imap", "--imap", "tls:mail.test:993")
        self.assertFalse(self.data.child("users").exists())
        backends = [s._backend for s in service if isinstance(getattr(s, "_backend", None), IMAPBackend)]
        self.assertEqual(len(backends), 1)

    def test_spillRows(self) -> None:
        """
        --spill-rows reaches the maildir backend; its default is the
        backend's own.
        """
        from directpush.backends._diskindex import SPILL_ROWS
        from directpush.backends.maildir import MaildirBackend

        for argv, expected in [((), SPILL_ROWS), (("--spill-rows", "7"), 7)]:
            service, _ = self.build(*argv)
            [backend] = [s._backend for s in service if isinstance(getattr(s, "_backend", None), MaildirBackend)]
            self.assertEqual(backend._spillRows, expected)

    def test_badIMAP(self) -> None:
        """
        A malformed --imap, plain IMAP to another machine, and an
        unreadable --imap-ca-file are one-line startup errors.
        """
        for argv, words in [
            (["--imap", "imap.test"], "expected tls:HOST:PORT"),
            (["--imap", "tcp:imap.test:143", "--imap-allow-plaintext"], "only allowed to this machine"),
            (["--imap", "tls:imap.test:0"], "port must be"),
            (["--imap", "tls:imap.test:993", "--imap-ca-file", "/nonexistent.pem"], "No such file"),
        ]:
            e = self.assertRaises(tap.StartupError, self.build, "--backend", "imap", *argv)
            self.assertIn(words, str(e))

    def test_listenFailure(self) -> None:
        """
        A port that cannot be had stops startup with one line, not a
        traceback.
        """

        class Refusing:
            def listen(self, factory):
                return fail(CannotListenError("127.0.0.1", 1, OSError("in use")))

        service = tap.ListenService("tcp:1", Refusing(), None)
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        e = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(e.code, 1)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertIn("cannot listen on tcp:1", stderr.getvalue())


class PluginTests(SynchronousTestCase):
    """
    The twistd plugin.
    """

    def test_discovered(self) -> None:
        """
        twistd finds 'directpush', a lazy ServiceMaker.
        """
        [plugin] = [p for p in getPlugins(IServiceMaker) if p.tapname == "directpush"]
        assertProvides(self, IServiceMaker, plugin)
        assertProvides(self, IPlugin, plugin)
        self.assertIsInstance(plugin.options(), tap.Options)

    def test_noInitInPlugins(self) -> None:
        """
        twisted/ and twisted/plugins/ carry no __init__.py, which would
        shadow Twisted's own.
        """
        self.assertFalse(ROOT.descendant(["twisted", "__init__.py"]).exists())
        self.assertFalse(ROOT.descendant(["twisted", "plugins", "__init__.py"]).exists())


class TwistdProcessTests(SynchronousTestCase):
    """
    C{twistd directpush} as a real process: startup failures are one line
    and a non-zero exit.
    """

    def twistd(self, *argv: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=ROOT.path)
        return subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "--logfile=-", "directpush", "--data", os.path.abspath(self.mktemp()), *argv],
            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT.path,
        )

    def assertOneLine(self, result: subprocess.CompletedProcess, words: str) -> None:
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        lines: List[str] = [line for line in output.splitlines() if words in line]
        self.assertEqual(len(lines), 1, output)

    def test_badOption(self) -> None:
        """
        An unknown option.
        """
        self.assertOneLine(self.twistd("--bogus"), "--bogus not recognized")

    def test_unreadableCertificate(self) -> None:
        """
        A certificate file that is not there.
        """
        self.assertOneLine(self.twistd("--listen", "ssl:0:privateKey=/nonexistent.pem"), "No such file")

    def test_portInUse(self) -> None:
        """
        A port another socket holds.
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        self.assertOneLine(
            self.twistd("--listen", f"tcp:{port}:interface=127.0.0.1"), "Address already in use"
        )


class FreezeTests(SynchronousTestCase):
    """
    L{tap.freezeStartup}.
    """

    def test_freezes(self) -> None:
        """
        The objects alive at startup are moved to the permanent generation,
        where collections do not look, and it is logged.
        """
        self.addCleanup(gc.unfreeze)
        gc.unfreeze()
        with capturedLogs() as events:
            tap.freezeStartup()
        self.assertGreater(gc.get_freeze_count(), 1000)
        [count] = [e["count"] for e in events if "count" in e]
        self.assertGreater(count, 1000)
