# -*- test-case-name: tests.test_auth -*-
"""
Tests for L{directpush.auth} and C{python -m directpush.users}.
"""

from __future__ import annotations

import io
import sys
from unittest import mock

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource

from directpush import auth
from directpush.users import main as usersMain

from .util import assertProvides, runNow


class SchemeTests(SynchronousTestCase):
    """
    Password schemes.
    """

    def test_scram(self) -> None:
        """
        A hashed password verifies; another does not; each hash is salted.
        """
        stored = auth.hashPassword("s3cret", iterations=1000)
        self.assertTrue(stored.startswith("{SCRAM-SHA-256}1000,"))
        self.assertTrue(auth.verifyPassword("s3cret", stored))
        self.assertFalse(auth.verifyPassword("s3cret!", stored))
        self.assertNotEqual(stored, auth.hashPassword("s3cret", iterations=1000))

    def test_dovecotVector(self) -> None:
        """
        A SCRAM-SHA-256 secret in Dovecot's layout, computed independently
        (RFC 7677's salt and iteration count, password "pencil").
        """
        stored = (
            "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,"
            "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,"
            "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        )
        self.assertTrue(auth.verifyPassword("pencil", stored))
        self.assertFalse(auth.verifyPassword("pencils", stored))

    def test_plain(self) -> None:
        """
        {PLAIN} and {CLEARTEXT}, scheme names in any case.
        """
        self.assertTrue(auth.verifyPassword("pw", "{PLAIN}pw"))
        self.assertTrue(auth.verifyPassword("pw", "{cleartext}pw"))
        self.assertFalse(auth.verifyPassword("pw2", "{PLAIN}pw"))

    def test_unknown(self) -> None:
        """
        Unknown or malformed schemes raise L{auth.UnknownScheme}.
        """
        for stored in ("pw", "{MD5-CRYPT}$1$x", "{SCRAM-SHA-256}x", "{SCRAM-SHA-256}0,AA==,AA==,AA=="):
            self.assertRaises(auth.UnknownScheme, auth.verifyPassword, "pw", stored)

    def test_userNames(self) -> None:
        """
        Plain names and e-mail addresses pass; path tricks do not.
        """
        for good in ("demo", "alice@example.org", "a.b+c@mail.example.co.uk", "x_y-z"):
            self.assertTrue(auth.validUserName(good), good)
        for bad in ("", ".hidden", "..", "a/b", "a\\b", "a..b", "a@", "@x", "a b", "a\x00", "é", "a" * 70, "a@b/c"):
            self.assertFalse(auth.validUserName(bad), bad)


class PasswdFileTests(SynchronousTestCase):
    """
    The users file.
    """

    def test_parse(self) -> None:
        """
        Dovecot passwd-file lines; extra fields, comments and bad lines are
        skipped, bad ones with a warning.
        """
        with capturedLogs() as events:
            users = auth.parsePasswd(
                "# comment\n\nalice@x.org:{PLAIN}a:1000:1000::/home/a::\n"
                "../etc:{PLAIN}x\nnocolon\nbob:{PLAIN}b\n"
            )
        self.assertEqual(users, {"alice@x.org": "{PLAIN}a", "bob": "{PLAIN}b"})
        self.assertEqual([e["number"] for e in events], [4, 5])

    def test_reload(self) -> None:
        """
        A changed file is read again; a removed one has no users.
        """
        path = FilePath(self.mktemp())
        passwd = auth.PasswdFile(path)
        self.assertIsNone(passwd.lookup("a"))
        auth.writePasswd(path, {"a": "{PLAIN}1"})
        self.assertEqual(passwd.lookup("a"), "{PLAIN}1")
        auth.writePasswd(path, {"a": "{PLAIN}22", "b": "{PLAIN}3"})
        self.assertEqual(passwd.lookup("a"), "{PLAIN}22")
        self.assertEqual(path.getPermissions().shorthand(), "rw-------")
        path.remove()
        self.assertIsNone(passwd.lookup("a"))


class CheckerTests(SynchronousTestCase):
    """
    L{auth.PasswdChecker}.
    """

    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        auth.writePasswd(
            self.path,
            {"alice@x.org": auth.hashPassword("R1ght-pass", iterations=1000), "bob": "{MD5}x"},
        )
        self.clock = Clock()
        self.hashes = 0
        real = auth.verifyPassword

        def counting(password: str, stored: str) -> bool:
            self.hashes += 1
            return real(password, stored)

        self.patch(auth, "verifyPassword", counting)
        self.checker = auth.PasswdChecker(auth.PasswdFile(self.path), runNow, self.clock)

    def check(self, user: bytes, password: bytes):
        return self.checker.requestAvatarId(UsernamePassword(user, password))

    def test_interface(self) -> None:
        """
        It is an L{ICredentialsChecker}.
        """
        assertProvides(self, ICredentialsChecker, self.checker)

    def test_success(self) -> None:
        """
        The right password gives the user name as avatar id.
        """
        self.assertEqual(self.successResultOf(self.check(b"alice@x.org", b"R1ght-pass")), b"alice@x.org")

    def test_failures(self) -> None:
        """
        Wrong password, unknown user, invalid name, non-UTF-8 and an
        uncheckable scheme all fail as UnauthorizedLogin; the logs name the
        user and never the password.
        """
        with capturedLogs() as events:
            for user, password in [
                (b"alice@x.org", b"Wr0ng-pass"),
                (b"carol", b"R1ght-pass"),
                (b"../alice", b"R1ght-pass"),
                (b"\xff", b"R1ght-pass"),
                (b"bob", b"x"),
            ]:
                self.failureResultOf(self.check(user, password), UnauthorizedLogin)
        self.assertEqual(len(events), 5)
        for event in events:
            self.assertNotIn("R1ght-pass", repr(event))
            self.assertNotIn("Wr0ng-pass", repr(event))

    def test_cache(self) -> None:
        """
        A verified password is remembered for VERIFIED_TTL seconds; a wrong
        one, a changed file or the TTL's end make it hash again.
        """
        self.successResultOf(self.check(b"alice@x.org", b"R1ght-pass"))
        self.successResultOf(self.check(b"alice@x.org", b"R1ght-pass"))
        self.assertEqual(self.hashes, 1)
        self.failureResultOf(self.check(b"alice@x.org", b"Wr0ng-pass"), UnauthorizedLogin)
        self.assertEqual(self.hashes, 2)
        self.clock.advance(auth.VERIFIED_TTL + 1)
        self.successResultOf(self.check(b"alice@x.org", b"R1ght-pass"))
        self.assertEqual(self.hashes, 3)
        auth.writePasswd(self.path, {"alice@x.org": auth.hashPassword("new", iterations=1000)})
        self.failureResultOf(self.check(b"alice@x.org", b"R1ght-pass"), UnauthorizedLogin)
        self.successResultOf(self.check(b"alice@x.org", b"new"))

    def test_failedCache(self) -> None:
        """
        Regression (torture suite): every wrong password cost the iterated
        hash, so a phone with an old password (or a flood of guesses)
        kept the thread pool busy. The same wrong password is refused
        without hashing for FAILED_TTL; another one, the right one, or a
        changed file are checked.
        """
        for _ in range(5):
            self.failureResultOf(self.check(b"alice@x.org", b"Wr0ng-pass"), UnauthorizedLogin)
        self.assertEqual(self.hashes, 1)
        self.failureResultOf(self.check(b"alice@x.org", b"Other-wrong"), UnauthorizedLogin)
        self.assertEqual(self.hashes, 2)
        self.successResultOf(self.check(b"alice@x.org", b"R1ght-pass"))
        self.assertEqual(self.hashes, 3)
        self.failureResultOf(self.check(b"alice@x.org", b"Wr0ng-pass"), UnauthorizedLogin)
        self.clock.advance(auth.FAILED_TTL + 1)
        self.failureResultOf(self.check(b"alice@x.org", b"Wr0ng-pass"), UnauthorizedLogin)
        self.assertEqual(self.hashes, 5)

    def test_checksBounded(self) -> None:
        """
        Regression (torture suite): password checks queued without bound
        behind the thread pool. Beyond maxChecking hashes in progress, a
        login fails at once with ChecksBusy (logged); when they finish,
        checks resume.
        """
        pending: list = []

        def later(f):
            d = Deferred()
            pending.append((d, f))
            return d

        def runPending() -> None:
            batch = pending[:]
            del pending[:]
            for d, f in batch:
                d.callback(f())

        checker = auth.PasswdChecker(auth.PasswdFile(self.path), later, self.clock, maxChecking=2)
        refused = []
        with capturedLogs() as events:
            for n in range(3):
                checker.requestAvatarId(UsernamePassword(b"alice@x.org", b"guess%d" % n)).addErrback(refused.append)
            runPending()  # the file reads: two hashes start, the third is refused
        self.assertEqual((len(pending), len(refused)), (2, 1))
        refused[0].trap(auth.ChecksBusy)
        self.assertTrue([e for e in events if "password checks already in progress" in e["log_format"]])
        runPending()
        self.assertEqual(len(refused), 3)
        d = checker.requestAvatarId(UsernamePassword(b"alice@x.org", b"R1ght-pass"))
        runPending()
        runPending()
        self.assertEqual(self.successResultOf(d), b"alice@x.org")

    def test_realm(self) -> None:
        """
        The realm hands out the resource made for the authenticated user.
        """
        made = []

        def makeResource(user: str) -> Resource:
            made.append(user)
            return Resource()

        realm = auth.Realm(makeResource)
        assertProvides(self, IRealm, realm)
        interface, avatar, logout = realm.requestAvatar(b"alice@x.org", None, IResource)
        self.assertIs(interface, IResource)
        self.assertEqual(made, ["alice@x.org"])
        self.assertRaises(NotImplementedError, realm.requestAvatar, b"a", None)


class UsersCommandTests(SynchronousTestCase):
    """
    C{python -m directpush.users}.
    """

    def runUsers(self, *argv: str, stdin: str = "") -> tuple:
        out, err = io.StringIO(), io.StringIO()
        with mock.patch.object(sys, "stdin", io.StringIO(stdin)), mock.patch.object(
            sys, "stdout", out
        ), mock.patch.object(sys, "stderr", err):
            code = usersMain(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_setListDelete(self) -> None:
        """
        set adds with a strong hash, list shows, delete removes.
        """
        data = self.mktemp()
        self.assertEqual(self.runUsers("--data", data, "set", "a@x.org", "--stdin", stdin="pw\n")[0], 0)
        code, printed, _ = self.runUsers("--data", data, "set", "b", "--random")
        self.assertEqual(code, 0)
        users = auth.parsePasswd(FilePath(data).child("users").getContent().decode())
        self.assertTrue(auth.verifyPassword("pw", users["a@x.org"]))
        self.assertTrue(users["a@x.org"].startswith("{SCRAM-SHA-256}"))
        self.assertTrue(auth.verifyPassword(printed.strip(), users["b"]))
        self.assertEqual(self.runUsers("--data", data, "list")[1], "a@x.org\nb\n")
        self.assertEqual(self.runUsers("--data", data, "delete", "b")[0], 0)
        self.assertEqual(self.runUsers("--data", data, "list")[1], "a@x.org\n")

    def test_refusals(self) -> None:
        """
        Bad names, empty passwords and unknown users are refused.
        """
        data = self.mktemp()
        self.assertEqual(self.runUsers("--data", data, "set", "../x", "--stdin", stdin="pw\n")[0], 2)
        self.assertEqual(self.runUsers("--data", data, "set", "x", "--stdin", stdin="\n")[0], 1)
        self.assertEqual(self.runUsers("--data", data, "delete", "x")[0], 1)
        self.assertFalse(FilePath(data).child("users").exists())
