# -*- test-case-name: tests.test_auth -*-
"""
Who may connect: a Dovecot-style passwd file read through twisted.cred.

Lines are C{name:{SCHEME}secret}, further colon-separated fields ignored
as Dovecot's passwd-file allows. Schemes: C{{PLAIN}} (alias C{{CLEARTEXT}})
and the salted, iterated C{{SCRAM-SHA-256}} that Dovecot also reads, which
L{hashPassword} writes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.web.resource import IResource
from zope.interface import implementer

T = TypeVar("T")
RunBlocking = Callable[[Callable[[], T]], "Deferred[T]"]

log = Logger()

#: Plain names or e-mail addresses; never anything that could climb out of a
#: directory when a backend makes a path from it.
_USER = re.compile(r"[A-Za-z0-9_%+-][A-Za-z0-9._%+-]{0,63}(@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)?\Z")

SCRAM_ITERATIONS = 100_000
#: How long a verified password is remembered, so that a phone's steady
#: stream of requests does not pay the iterated hash each time.
VERIFIED_TTL = 15 * 60.0
#: How long a wrong password is remembered: a phone left with an old
#: password retries it all day, and each check costs the iterated hash.
FAILED_TTL = 5 * 60.0
#: Iterated-hash checks in progress at once; beyond, the login is answered
#: 503 with Retry-After (L{ChecksBusy}) rather than queued, so that a flood
#: of guesses cannot take every thread of the pool (which also reads mail)
#: or pile up without bound. The server's pool has four threads.
MAX_CHECKING = 3


class CannotCheck(UnauthorizedLogin):
    """
    The password could not be checked now (not: it is wrong). The web
    layer answers 503 with Retry-After, not 401, so that phones do not ask
    their users for the password.
    """


class ChecksBusy(CannotCheck):
    """
    Too many password checks are in progress: try again shortly.
    """


def plainCredentials(credentials: IUsernamePassword) -> Tuple[str, str]:
    """
    The user name and password of Basic credentials as text, the name
    checked with L{validUserName}; what every checker does first.

    @raise UnauthorizedLogin: (logged) for anything else.
    """
    try:
        name = credentials.username.decode("utf-8")
        password = credentials.password.decode("utf-8")
    except UnicodeDecodeError:
        log.warn("authentication failed: user name or password not UTF-8")
        raise UnauthorizedLogin()
    if not validUserName(name):
        log.warn("authentication failed: invalid user name {user!r}", user=name[:64])
        raise UnauthorizedLogin()
    return name, password


def validUserName(name: str) -> bool:
    """
    Is C{name} acceptable as a user name (plain or an e-mail address)?
    """
    return len(name) <= 254 and _USER.match(name) is not None and ".." not in name


def _scram(password: bytes, salt: bytes, iterations: int) -> Tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    clientKey = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    serverKey = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(clientKey).digest(), serverKey


def hashPassword(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """
    The C{{SCRAM-SHA-256}} form of C{password} (Dovecot's layout:
    iterations, salt, StoredKey and ServerKey, comma-separated).
    """
    salt = os.urandom(16)
    stored, server = _scram(password.encode("utf-8"), salt, iterations)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"{{SCRAM-SHA-256}}{iterations},{b64(salt)},{b64(stored)},{b64(server)}"


class UnknownScheme(ValueError):
    """
    A stored password uses a scheme this server cannot check.
    """


def verifyPassword(password: str, stored: str) -> bool:
    """
    Does C{password} match the stored C{{SCHEME}secret}?

    @raise UnknownScheme: for a scheme that cannot be checked here.
    """
    scheme, sep, secret = stored[1:].partition("}")
    if not stored.startswith("{") or not sep:
        raise UnknownScheme("no {SCHEME} prefix")
    scheme = scheme.upper()
    given = password.encode("utf-8")
    if scheme in ("PLAIN", "CLEARTEXT"):
        return hmac.compare_digest(given, secret.encode("utf-8"))
    if scheme == "SCRAM-SHA-256":
        try:
            count, salt, storedKey, _ = secret.split(",")
            iterations = int(count)
            saltBytes = base64.b64decode(salt, validate=True)
            expected = base64.b64decode(storedKey, validate=True)
        except ValueError:
            raise UnknownScheme("malformed SCRAM-SHA-256 secret") from None
        if not 1 <= iterations <= 10_000_000:
            raise UnknownScheme("SCRAM-SHA-256 iteration count out of range")
        actual, _ = _scram(given, saltBytes, iterations)
        return hmac.compare_digest(actual, expected)
    raise UnknownScheme(f"scheme {scheme[:20]} is not supported")


def parsePasswd(text: str) -> Dict[str, str]:
    """
    Read passwd-file text into name -> C{{SCHEME}secret}. Comments,
    blank lines and lines with an invalid name are skipped (logged).
    """
    users: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        secret = rest.split(":", 1)[0]
        if not sep or not validUserName(name) or not secret:
            log.warn("users file line {number} is not name:{{SCHEME}}secret; skipped", number=number)
            continue
        users[name] = secret
    return users


def formatPasswd(users: Dict[str, str]) -> str:
    return "".join(f"{name}:{secret}\n" for name, secret in sorted(users.items()))


def writePasswd(path: FilePath[str], users: Dict[str, str]) -> None:
    """
    Replace the passwd file atomically, readable by its owner only.
    """
    tmp = path.sibling(path.basename() + ".tmp")
    fd = os.open(tmp.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(formatPasswd(users))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp.path, path.path)


@attrs.define
class PasswdFile:
    """
    A passwd file re-read whenever it changes on disk, so that users added
    with C{python -m directpush.users} take effect without a restart.
    """

    path: FilePath[str]
    _stamp: Optional[Tuple[int, int, int]] = None
    _users: Dict[str, str] = attrs.field(factory=dict)

    def lookup(self, name: str) -> Optional[str]:
        """
        The stored secret for C{name}. Blocking: call through runBlocking.
        """
        try:
            st = os.stat(self.path.path)
        except OSError:
            self._stamp, self._users = None, {}
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            with open(self.path.path, encoding="utf-8", errors="replace") as f:
                self._users = parsePasswd(f.read())
            self._stamp = stamp
        return self._users.get(name)


@implementer(ICredentialsChecker)
@attrs.define
class PasswdChecker:
    """
    Checks HTTP Basic credentials against a L{PasswdFile}. File reads and
    the iterated hash run through C{runBlocking}, off the reactor thread;
    a verified password is remembered (as a keyed digest, never in clear)
    for L{VERIFIED_TTL} seconds.
    """

    credentialInterfaces = (IUsernamePassword,)

    _passwd: PasswdFile
    _runBlocking: RunBlocking[Any]
    _clock: IReactorTime
    _key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32))
    _verified: Dict[str, Tuple[str, bytes, float]] = attrs.field(factory=dict)
    _failed: Dict[str, Tuple[str, bytes, float]] = attrs.field(factory=dict)
    _checking: int = 0
    maxChecking: int = MAX_CHECKING

    async def _check(self, credentials: IUsernamePassword) -> bytes:
        name, password = plainCredentials(credentials)
        stored = await self._runBlocking(lambda: self._passwd.lookup(name))
        if stored is None:
            log.warn("authentication failed: no user {user}", user=name)
            raise UnauthorizedLogin()
        digest = hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()
        now = self._clock.seconds()
        cached = self._verified.get(name)
        if (
            cached is not None
            and cached[0] == stored
            and cached[2] > now
            and hmac.compare_digest(cached[1], digest)
        ):
            return name.encode("utf-8")
        failed = self._failed.get(name)
        if failed is not None and failed[0] == stored and failed[2] > now and hmac.compare_digest(failed[1], digest):
            log.warn("authentication failed: wrong password for {user} (the same again)", user=name)
            raise UnauthorizedLogin()
        if self._checking >= self.maxChecking:
            log.warn(
                "authentication of {user} deferred: {count} password checks already in progress",
                user=name,
                count=self._checking,
            )
            raise ChecksBusy()
        self._checking += 1
        try:
            ok = await self._runBlocking(lambda: verifyPassword(password, stored))
        except UnknownScheme as e:
            log.error("cannot check the password of {user}: {reason}", user=name, reason=str(e))
            raise UnauthorizedLogin()
        finally:
            self._checking -= 1
        if not ok:
            log.warn("authentication failed: wrong password for {user}", user=name)
            if len(self._failed) > 100_000:
                self._failed.clear()  # a bound on memory; forgetting costs a hash
            self._failed[name] = (stored, digest, now + FAILED_TTL)
            raise UnauthorizedLogin()
        self._failed.pop(name, None)
        self._verified[name] = (stored, digest, now + VERIFIED_TTL)
        return name.encode("utf-8")

    def requestAvatarId(self, credentials: IUsernamePassword) -> "Deferred[bytes]":
        return Deferred.fromCoroutine(self._check(credentials))


@implementer(IRealm)
@attrs.frozen
class Realm:
    """
    Hands each authenticated user a resource bound to that user only.

    @ivar makeResource: builds the per-user resource from the user name.
    """

    makeResource: Callable[[str], Any]

    def requestAvatar(self, avatarId: bytes, mind: object, *interfaces: Any) -> Any:
        if IResource not in interfaces:
            raise NotImplementedError("only IResource avatars")
        return IResource, self.makeResource(avatarId.decode("utf-8")), lambda: None
