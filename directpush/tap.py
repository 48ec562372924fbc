# -*- test-case-name: tests.test_tap -*-
"""
C{twistd directpush}: options and service wiring. L{makeService} is the only
place in directpush that touches the global reactor.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from typing import Any, List, Optional

import attrs
from twisted.application import service
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from twisted.internet.threads import deferToThreadPool

from . import auth, certificate, web
from .protocol.dispatch import Dispatcher

log = Logger()

DEFAULT_PORT = 8443


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run directpush, an Exchange ActiveSync server with Direct Push. "
        "With no --listen it serves HTTPS on port %d with a self-signed "
        "certificate kept in the data directory." % DEFAULT_PORT
    )
    optParameters = [
        [
            "data",
            "d",
            "directpush-data",
            "Directory holding everything the server keeps: users, mail, "
            "device state, the self-signed certificate.",
        ],
        [
            "users",
            "u",
            None,
            "Users file, Dovecot passwd-file style (name:{SCHEME}secret). "
            "Default: DATA/users, created with a 'demo' user on first start. "
            "Manage it with: python -m directpush.users.",
        ],
        [
            "max-body",
            None,
            str(web.DEFAULT_MAX_BODY),
            "Largest request body accepted, in bytes, after gzip decoding; "
            "larger ones get HTTP 413.",
        ],
        [
            "hostname",
            None,
            None,
            "Host name written into the self-signed certificate "
            "(default: this machine's name).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self._error: Optional[str] = None

    def opt_listen(self, description: str) -> None:
        """
        Where to listen, as a Twisted endpoint string; repeat for several.
        TLS with your certificate:
        ssl:443:privateKey=key.pem:certKey=cert.pem. Plain tcp:PORT only
        behind a TLS-terminating proxy (passwords travel in every request).
        Default: ssl:8443 with a self-signed certificate.
        """
        self["listen"].append(description)

    opt_l = opt_listen

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        # twistd prints the whole usage text for a bad option; keep the
        # error for makeService to report as one line instead.
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            self._error = str(e)

    def postOptions(self) -> None:
        try:
            maxBody = int(self["max-body"])
        except ValueError:
            raise usage.UsageError("--max-body must be a whole number of bytes")
        if maxBody < 1024:
            raise usage.UsageError("--max-body must be at least 1024 bytes")
        self["max-body"] = maxBody


@attrs.frozen
class Config:
    """
    Everything L{buildService} needs, checked.
    """

    data: FilePath[str]
    users: FilePath[str]
    listen: List[str]
    maxBody: int
    hostname: str


class StartupError(Exception):
    """
    The server cannot start; the message is the one line to show.
    """


def configFromOptions(options: Options) -> Config:
    if options._error is not None:
        raise StartupError(options._error)
    data = FilePath(os.path.abspath(options["data"]))
    users = FilePath(os.path.abspath(options["users"])) if options["users"] else data.child("users")
    return Config(
        data=data,
        users=users,
        listen=list(options["listen"]),
        maxBody=options["max-body"],
        hostname=options["hostname"] or socket.gethostname(),
    )


def prepareData(config: Config) -> None:
    """
    Create the data directory and, on a first start, a users file with a
    'demo' user whose random password is logged this once. Runs before
    the reactor starts, so blocking here is fine.
    """
    try:
        if not config.data.exists():
            os.makedirs(config.data.path, mode=0o700)
        if not config.users.exists():
            password = secrets.token_urlsafe(12)
            auth.writePasswd(config.users, {"demo": auth.hashPassword(password)})
            log.warn(
                "created {users} with user 'demo', password {password} "
                "(shown only now; change it with python -m directpush.users)",
                users=config.users.path,
                password=password,
            )
    except OSError as e:
        raise StartupError(f"cannot prepare the data directory: {e}") from None


def defaultListen(config: Config) -> str:
    """
    The HTTPS endpoint on the self-signed certificate, made if missing.
    """
    tls = config.data.child("tls")
    try:
        key, cert, fingerprint = certificate.ensureSelfSigned(tls, config.hostname)
    except (OSError, ValueError) as e:
        raise StartupError(f"cannot create the self-signed certificate: {e}") from None
    log.info(
        "self-signed certificate {cert}, SHA-256 fingerprint {fingerprint}",
        cert=cert.path,
        fingerprint=fingerprint,
    )
    quote = endpoints.quoteStringArgument
    return f"ssl:{DEFAULT_PORT}:privateKey={quote(key.path)}:certKey={quote(cert.path)}"


@attrs.define
class ListenService(service.Service):
    """
    Listens on one endpoint and turns a failure to listen (port in use,
    no permission) into one clear line and an exit, not a traceback.
    """

    description: str
    endpoint: IStreamServerEndpoint
    factory: Any
    _port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        result: List[Any] = []
        self.endpoint.listen(self.factory).addBoth(result.append)
        if result and isinstance(result[0], Failure):
            sys.stderr.write(
                f"twistd directpush: cannot listen on {self.description}: "
                f"{result[0].getErrorMessage()}\n"
            )
            raise SystemExit(1)
        self._port = result[0] if result else None

    def startService(self) -> None:
        if not self.running and self._port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> "Deferred[None] | None":
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()  # type: ignore[no-any-return]
        return None


def buildService(config: Config, reactor: Any) -> service.MultiService:
    """
    Wire every room together on C{reactor}.

    @raise StartupError: for bad endpoint strings or unreadable certificates.
    """
    prepareData(config)
    listen = config.listen or [defaultListen(config)]

    top = service.MultiService()
    pool = ThreadPool(minthreads=1, maxthreads=4, name="directpush-blocking")
    poolService = _ThreadPoolService(pool)
    poolService.setServiceParent(top)

    def runBlocking(f: Any) -> "Deferred[Any]":
        return deferToThreadPool(reactor, pool, f)

    dispatcher = Dispatcher()
    checker = auth.PasswdChecker(auth.PasswdFile(config.users), runBlocking, reactor)
    portal = Portal(auth.Realm(web.makeUserResource(dispatcher, config.maxBody)), [checker])
    site = web.buildSite(portal, reactor, maxBody=config.maxBody)

    for description in listen:
        try:
            endpoint = endpoints.serverFromString(reactor, description)
        except Exception as e:
            # serverFromString raises whatever the parser or OpenSSL raise
            # for bad strings and unreadable certificate files.
            raise StartupError(f"bad --listen {description!r}: {_describe(e)}") from None
        ListenService(description, endpoint, site).setServiceParent(top)
    return top


def _describe(e: BaseException) -> str:
    text = str(e) or e.__class__.__name__
    return text if len(text) < 300 else text[:300] + "..."


@attrs.define
class _ThreadPoolService(service.Service):
    _pool: ThreadPool

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._pool.started:
            self._pool.stop()
        return succeed(None)


def makeService(options: Options) -> service.IService:
    """
    twistd's entry point: the one place that imports the global reactor.
    """
    from twisted.internet import reactor

    try:
        config = configFromOptions(options)
        return buildService(config, reactor)
    except StartupError as e:
        sys.stderr.write(f"twistd directpush: {e}\n")
        raise SystemExit(1)
