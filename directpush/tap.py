# -*- test-case-name: tests.test_tap -*-
"""
C{twistd directpush}: options and service wiring. L{makeService} is the only
place in directpush that touches the global reactor.
"""

from __future__ import annotations

import ctypes
import gc
import os
import secrets
import socket
import sys
from typing import Any, List, Optional

import attrs
from twisted.application import service
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from twisted.internet.threads import deferToThreadPool

from . import auth, certificate, throttle, web
from .backends._diskindex import SPILL_ROWS
from .backends.maildir import MaildirBackend
from .backends import imap
from .directory import EmptyDirectory, PasswdDirectory
from .protocol.commands import makeDispatcher
from .protocol.core import Policy, Services
from .push import PushHub
from .renderpool import RenderPool
from .state.sqlite import SQLiteStateStore
from .submit import Submission, endpointFromString

log = Logger()

DEFAULT_PORT = 8443
_LIMITS = throttle.Limits()

#: Seconds an unused mailbox stays cached (see L{MaildirBackend}): long
#: enough for a device's FolderSync, Syncs and Ping to share one opening,
#: short enough that devices waiting on Pings do not keep theirs.
MAILBOX_IDLE = 30.0


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
        [
            "mail-root",
            None,
            None,
            "Where users' maildirs are: a directory holding one maildir per "
            "user (default DATA/mail), or an absolute Dovecot-style pattern "
            "such as /var/vmail/%d/%n/Maildir (%u user, %n local part, %d domain).",
        ],
        [
            "domain",
            None,
            None,
            "Mail domain of users whose names are not e-mail addresses "
            "(alice -> alice@DOMAIN).",
        ],
        [
            "policy",
            None,
            "permissive",
            "Device policy: 'permissive' (devices provision, nothing is "
            "enforced) or 'none' (no provisioning asked).",
        ],
        [
            "min-heartbeat",
            None,
            "60",
            "Shortest Ping heartbeat allowed, in seconds; devices asking for "
            "less are told this bound (Ping status 5).",
        ],
        [
            "max-heartbeat",
            None,
            "3540",
            "Longest Ping heartbeat allowed, in seconds. Set it below the "
            "shortest idle timeout of every firewall, NAT and load balancer "
            "between phones and this server.",
        ],
        [
            "max-ping-folders",
            None,
            "300",
            "Most folders one Ping may watch (Ping status 6 beyond).",
        ],
        [
            "spill-rows",
            None,
            str(SPILL_ROWS),
            "Maildir folders of more messages than this keep their index in a "
            "temporary file instead of memory.",
        ],
        [
            "render-workers",
            None,
            None,
            "Worker processes that turn messages into EAS items, so that big "
            "Syncs use every core and never stall other devices "
            "(default: the number of cores; 0 renders in the server process).",
        ],
        [
            "smtp",
            None,
            None,
            "Smarthost for mail to non-local recipients, as tls:HOST:465 "
            "(implicit TLS) or tcp:HOST:587 (STARTTLS required; plaintext only "
            "to loopback). Certificates are verified. Without it, only local "
            "users can be written to.",
        ],
        [
            "backend",
            None,
            "maildir",
            "Where mail is: 'maildir' (maildirs under --mail-root, users in "
            "the users file) or 'imap' (an existing IMAP server, see --imap; "
            "devices log in with their IMAP user name and password).",
        ],
        [
            "imap",
            None,
            None,
            "The IMAP server for --backend imap: tls:HOST:993 (implicit TLS) "
            "or tcp:HOST:143 (STARTTLS required). Certificates and host names "
            "are verified.",
        ],
        [
            "imap-ca-file",
            None,
            None,
            "PEM file of the certificate authorities (or the self-signed "
            "certificate) trusted for --imap.",
        ],
        [
            "smtp-ca-file",
            None,
            None,
            "PEM file of the certificate authorities trusted for --smtp.",
        ],
        [
            "smtp-user",
            None,
            None,
            "User name for SMTP AUTH at the smarthost (with --smtp-password-file).",
        ],
        [
            "smtp-password-file",
            None,
            None,
            "File whose first line is the SMTP AUTH password.",
        ],
        [
            "device-rate",
            None,
            "%g/%d" % (_LIMITS.deviceRate, _LIMITS.deviceBurst),
            "Requests one device may make: RATE per second sustained, BURST "
            "at once, as RATE/BURST. Beyond it: HTTP 503 with Retry-After.",
        ],
        [
            "user-rate",
            None,
            "%g/%d" % (_LIMITS.userRate, _LIMITS.userBurst),
            "Requests all of one user's devices together may make, as RATE/BURST.",
        ],
        [
            "user-concurrent",
            None,
            str(_LIMITS.userConcurrent),
            "Requests of one user in progress at once, waiting Pings "
            "included; more get HTTP 503.",
        ],
        [
            "peer-connections",
            None,
            str(_LIMITS.peerConnections),
            "Open connections from one IP address (0: no limit). Behind a "
            "reverse proxy every connection comes from the proxy: use 0.",
        ],
        [
            "malloc-arenas",
            None,
            "1",
            "glibc malloc arenas for the process (0: glibc's default, 8 per "
            "core). Each thread of a pool otherwise gets its own arena, which "
            "keeps its own peak and fragments: memory creeps with every "
            "request. MALLOC_ARENA_MAX in the environment wins.",
        ],
        [
            "malloc-mmap-threshold",
            None,
            "32768",
            "Bytes from which glibc malloc gives each block its own mapping "
            "(0: glibc's default, a threshold that rises as big blocks are "
            "freed and lets blocks that grow each Sync fragment the heap). "
            "MALLOC_MMAP_THRESHOLD_ in the environment wins.",
        ],
        [
            "request-timeout",
            None,
            "%g/%g/%d" % (_LIMITS.headerTimeout, _LIMITS.bodyTimeout, _LIMITS.minBodyRate),
            "Receiving a request, as HEADERS/BODY/RATE: seconds for the "
            "headers, seconds a body may stall, bytes per second that earn "
            "a body one more second. Slower clients get 408 and are cut off.",
        ],
    ]
    optFlags = [
        [
            "imap-allow-plaintext",
            None,
            "Allow plain IMAP without TLS to a tcp: server on loopback (passwords cross in clear).",
        ],
        [
            "smtp-allow-plaintext",
            None,
            "Allow a tcp: smarthost that is not on loopback (STARTTLS is still required).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self._error: Optional[str] = None

    def opt_listen(self, description: str) -> None:
        """Where to listen, as a Twisted endpoint string; repeat for several. TLS with your certificate: ssl:443:privateKey=key.pem:certKey=cert.pem. Plain tcp:PORT only behind a TLS-terminating proxy (passwords travel in every request). Default: ssl:8443 with a self-signed certificate."""  # noqa: E501 (usage prints it as is)
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
        try:
            self["policy"] = Policy(self["policy"])
        except ValueError:
            raise usage.UsageError("--policy must be 'permissive' or 'none'")
        for name, low, high in (
            ("min-heartbeat", 1, 3540),
            ("max-heartbeat", 1, 86400),
            ("max-ping-folders", 1, 10000),
            ("spill-rows", 1, 1 << 32),
        ):
            value = str(self[name])
            if not value.isdigit() or not low <= int(value) <= high:
                raise usage.UsageError(f"--{name} must be a whole number from {low} to {high}")
            self[name] = int(value)
        threshold = str(self["malloc-mmap-threshold"])
        if not threshold.isdigit() or not (int(threshold) == 0 or 4096 <= int(threshold) <= 1 << 25):
            raise usage.UsageError("--malloc-mmap-threshold must be 0 or a number of bytes from 4096 to 33554432")
        self["malloc-mmap-threshold"] = int(threshold)
        arenas = str(self["malloc-arenas"])
        if not arenas.isdigit() or int(arenas) > 1024:
            raise usage.UsageError("--malloc-arenas must be a number from 0 to 1024")
        self["malloc-arenas"] = int(arenas)
        if self["min-heartbeat"] > self["max-heartbeat"]:
            raise usage.UsageError("--min-heartbeat must not exceed --max-heartbeat")
        workers = self["render-workers"]
        if workers is None:
            self["render-workers"] = os.cpu_count() or 1
        elif not str(workers).isdigit() or int(workers) > 64:
            raise usage.UsageError("--render-workers must be a number from 0 to 64")
        else:
            self["render-workers"] = int(workers)
        if self["backend"] not in ("maildir", "imap"):
            raise usage.UsageError("--backend must be 'maildir' or 'imap'")
        if self["backend"] == "imap" and not self["imap"]:
            raise usage.UsageError("--backend imap needs --imap ENDPOINT")
        if bool(self["smtp-user"]) != bool(self["smtp-password-file"]):
            raise usage.UsageError("--smtp-user and --smtp-password-file go together")
        self["limits"] = _limits(self)


def _numbers(options: usage.Options, name: str, count: int) -> List[float]:
    parts = str(options[name]).split("/")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != count or not all(0 < n < 1e9 for n in numbers):
        raise usage.UsageError(f"--{name} must be {count} positive numbers separated by '/'")
    return numbers


def _limits(options: usage.Options) -> throttle.Limits:
    deviceRate, deviceBurst = _numbers(options, "device-rate", 2)
    userRate, userBurst = _numbers(options, "user-rate", 2)
    headerTimeout, bodyTimeout, minBodyRate = _numbers(options, "request-timeout", 3)
    counts = {}
    for name in ("user-concurrent", "peer-connections"):
        value = str(options[name])
        if not value.isdigit() or int(value) > 10**9:
            raise usage.UsageError(f"--{name} must be a whole number")
        counts[name] = int(value)
    if counts["user-concurrent"] < 1:
        raise usage.UsageError("--user-concurrent must be at least 1")
    return throttle.Limits(
        deviceRate=deviceRate,
        deviceBurst=max(1, int(deviceBurst)),
        userRate=userRate,
        userBurst=max(1, int(userBurst)),
        userConcurrent=counts["user-concurrent"],
        peerConnections=counts["peer-connections"],
        headerTimeout=headerTimeout,
        bodyTimeout=bodyTimeout,
        minBodyRate=max(1, int(minBodyRate)),
    )


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
    mailRoot: str = ""
    domain: Optional[str] = None
    policy: Policy = Policy.PERMISSIVE
    smtp: Optional[str] = None
    smtpCAFile: Optional[str] = None
    smtpUser: Optional[str] = None
    smtpPasswordFile: Optional[str] = None
    smtpAllowPlaintext: bool = False
    renderWorkers: int = 0
    minHeartbeat: int = 60
    maxHeartbeat: int = 3540
    maxPingFolders: int = 300
    spillRows: int = SPILL_ROWS
    limits: throttle.Limits = throttle.Limits()
    backend: str = "maildir"
    imap: Optional[str] = None
    imapCAFile: Optional[str] = None
    imapAllowPlaintext: bool = False


class StartupError(Exception):
    """
    The server cannot start; the message is the one line to show.
    """


def configFromOptions(options: Options) -> Config:
    if options._error is not None:
        raise StartupError(options._error)
    data = FilePath(os.path.abspath(options["data"]))
    users = FilePath(os.path.abspath(options["users"])) if options["users"] else data.child("users")
    mailRoot = options["mail-root"] or data.child("mail").path
    if "%" not in mailRoot:
        mailRoot = os.path.abspath(mailRoot)
    return Config(
        data=data,
        users=users,
        listen=list(options["listen"]),
        maxBody=options["max-body"],
        hostname=options["hostname"] or socket.gethostname(),
        mailRoot=mailRoot,
        domain=options["domain"],
        policy=options["policy"],
        smtp=options["smtp"],
        smtpCAFile=options["smtp-ca-file"],
        smtpUser=options["smtp-user"],
        smtpPasswordFile=options["smtp-password-file"],
        smtpAllowPlaintext=bool(options["smtp-allow-plaintext"]),
        renderWorkers=options["render-workers"],
        minHeartbeat=options["min-heartbeat"],
        maxHeartbeat=options["max-heartbeat"],
        maxPingFolders=options["max-ping-folders"],
        spillRows=options["spill-rows"],
        limits=options["limits"],
        backend=options["backend"],
        imap=options["imap"],
        imapCAFile=options["imap-ca-file"],
        imapAllowPlaintext=bool(options["imap-allow-plaintext"]),
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
        if config.backend == "maildir" and not config.users.exists():
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
        web.slimTransports(self._port)

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
    _ThreadPoolService(pool).setServiceParent(top)
    # One thread for the state store keeps its writes in the order given.
    statePool = ThreadPool(minthreads=1, maxthreads=1, name="directpush-state")
    _ThreadPoolService(statePool).setServiceParent(top)

    def runBlocking(f: Any) -> "Deferred[Any]":
        return deferToThreadPool(reactor, pool, f)

    def runState(f: Any) -> "Deferred[Any]":
        return deferToThreadPool(reactor, statePool, f)

    databasePath = config.data.child("state.sqlite")
    # Before the reactor runs, blocking is fine: open the database once here
    # so that a bad file stops startup with one line, not the first request.
    probe = SQLiteStateStore(databasePath, _runNow)
    opened: List[Any] = []
    probe.open().addBoth(opened.append)
    probe.close()
    if isinstance(opened[0], Failure):
        raise StartupError(f"cannot open the state database {databasePath.path}: {opened[0].getErrorMessage()}")
    store = SQLiteStateStore(databasePath, runState)
    _Closing(store).setServiceParent(top)
    if config.backend == "imap":
        assert config.imap is not None
        try:
            imapEndpoint, startTLS = imap.imapEndpoint(
                reactor, config.imap, config.imapAllowPlaintext, config.imapCAFile
            )
        except (ValueError, OSError) as e:
            raise StartupError(f"bad --imap: {_describe(e)}") from None
        imapBackend = imap.IMAPBackend(imapEndpoint, store, reactor, startTLS)
        _ClosingBackend(imapBackend).setServiceParent(top)
        backend: Any = imapBackend
        checker: Any = imap.IMAPChecker(imapBackend)
        directory: Any = EmptyDirectory()
        submission = Submission(
            directory, backend, *_smarthost(config, reactor), userCredentials=imapBackend.credentials
        )
    else:
        try:
            backend = MaildirBackend(
                config.mailRoot,
                runBlocking,
                reactor,
                reactor=reactor,
                mailboxIdle=MAILBOX_IDLE,
                spillRows=config.spillRows,
            )
        except ValueError as e:
            raise StartupError(f"bad --mail-root: {e}") from None
        _StopCaching(backend).setServiceParent(top)
        passwd = auth.PasswdFile(config.users)
        directory = PasswdDirectory(auth.PasswdFile(config.users), runBlocking, config.domain)
        submission = Submission(directory, backend, *_smarthost(config, reactor))
        checker = auth.PasswdChecker(passwd, runBlocking, reactor)
    hub = PushHub(reactor, backend)
    # Operators' tools and tests look at it through the service tree.
    top.hub = hub  # type: ignore[attr-defined]
    services = Services(
        backend,
        store,
        reactor,
        submission=submission,
        directory=directory,
        policy=config.policy,
        domain=config.domain,
        hub=hub,
        minHeartbeat=config.minHeartbeat,
        maxHeartbeat=config.maxHeartbeat,
        maxPingFolders=config.maxPingFolders,
    )
    if config.renderWorkers:
        renderPool = RenderPool(reactor, config.renderWorkers)
        renderPool.setServiceParent(top)
        services.render = renderPool
        services.renderAhead = True
    dispatcher = throttle.Throttle(makeDispatcher(services), config.limits, reactor)
    portal = Portal(auth.Realm(web.makeUserResource(dispatcher, config.maxBody)), [checker])
    guard = throttle.ConnectionGuard(config.limits, reactor)
    site = web.buildSite(portal, reactor, maxBody=config.maxBody, guard=guard)
    # Operators' tools and tests look at them through the service tree.
    top.throttle = dispatcher  # type: ignore[attr-defined]
    top.guard = guard  # type: ignore[attr-defined]

    for description in listen:
        try:
            endpoint = endpoints.serverFromString(reactor, description)
        except Exception as e:
            # serverFromString raises whatever the parser or OpenSSL raise
            # for bad strings and unreadable certificate files.
            raise StartupError(f"bad --listen {description!r}: {_describe(e)}") from None
        _releaseIdleBuffers(endpoint)
        ListenService(description, endpoint, site).setServiceParent(top)
    return top


def _smarthost(config: Config, reactor: Any) -> tuple:
    """
    The Submission arguments after C{directory, backend}: endpoint,
    clock, HELO name, credentials, TLS requirement and mode.
    """
    if config.smtp is None:
        return (None, reactor, config.hostname)
    try:
        endpoint, mode = endpointFromString(
            reactor, config.smtp, config.smtpAllowPlaintext, config.smtpCAFile
        )
    except (ValueError, OSError) as e:
        raise StartupError(f"bad --smtp: {_describe(e)}") from None
    credentials = None
    if config.smtpUser and config.smtpPasswordFile:
        try:
            with open(config.smtpPasswordFile, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise StartupError(f"cannot read --smtp-password-file: {e}") from None
        user = config.smtpUser
        credentials = lambda: (user, password)  # noqa: E731
    return (endpoint, reactor, config.hostname, credentials, mode.required, mode)


def _releaseIdleBuffers(endpoint: Any) -> None:
    """
    Let OpenSSL free each TLS connection's read and write buffers (some
    70 KB) while it is idle: a waiting Ping is idle for most of its life.
    The TLS endpoint keeps its context factory in a private attribute; a
    test pins it.
    """
    factory = getattr(endpoint, "_sslContextFactory", None)
    if factory is not None:
        from OpenSSL import SSL

        context = factory.getContext()
        context.set_mode(context.set_mode(0) | SSL.MODE_RELEASE_BUFFERS)


def _describe(e: BaseException) -> str:
    text = str(e) or e.__class__.__name__
    return text if len(text) < 300 else text[:300] + "..."


def _runNow(f: Any) -> "Deferred[Any]":
    try:
        return succeed(f())
    except Exception:
        return fail()


@attrs.define
class _Closing(service.Service):
    """
    Closes the state store when the server stops.
    """

    _store: SQLiteStateStore

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        return self._store.close()


@attrs.define
class _StopCaching(service.Service):
    """
    Stops the backend's mailbox cache sweeps when the server stops.
    """

    _backend: MaildirBackend

    def stopService(self) -> None:
        super().stopService()
        self._backend.stopCaching()


@attrs.define
class _ClosingBackend(service.Service):
    """
    Closes the IMAP bridge's connections when the server stops.
    """

    _backend: Any

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        return Deferred.fromCoroutine(self._backend.close())


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


#: glibc's mallopt() parameter for the most arenas (malloc.h).
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3


def limitMallocArenas(count: int) -> bool:
    """
    Ask glibc's malloc for at most C{count} arenas. By default each thread
    that allocates gets an arena of its own (up to 8 per core); the
    threads of our pools (file reads, the state database) allocate the
    Sync windows' data, and each arena keeps its own high-water mark and
    fragments, so resident memory creeps by tens of KiB with every Sync.
    Threads that share one arena lose little: the GIL serialises their
    Python work anyway.

    @return: whether glibc took it (False elsewhere, e.g. musl).
    """
    return _mallopt(_M_ARENA_MAX, count)


def fixMmapThreshold(size: int) -> bool:
    """
    Have glibc's malloc serve every block of C{size} bytes or more with
    its own mmap, returned to the system when freed. By default the
    threshold rises to the size of each such block freed, so blocks that
    grow a little every Sync (a device's item map, the state it stores)
    come from the heap instead, each a little bigger than the hole the
    last one left: resident memory crept by some 15 KiB a Sync, through
    a big folder's first Sync as through many small ones.

    @return: whether glibc took it (False elsewhere, e.g. musl).
    """
    return _mallopt(_M_MMAP_THRESHOLD, size)


def _mallopt(parameter: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(parameter, value))


def freezeStartup() -> None:
    """
    Move everything made during startup (modules, classes, the service
    tree: hundreds of thousands of objects that live as long as the
    process) out of the collector's reach, so that the full collections
    that thousands of waiting requests bring are not made longer by them.
    """
    gc.collect()
    gc.freeze()
    log.info("startup objects frozen: {count} kept out of garbage collection", count=gc.get_freeze_count())


def makeService(options: Options) -> service.IService:
    """
    twistd's entry point: the one place that imports the global reactor.
    """
    from twisted.internet import reactor

    reactor.callWhenRunning(freezeStartup)
    try:
        config = configFromOptions(options)
        if options["malloc-arenas"] and "MALLOC_ARENA_MAX" not in os.environ:
            # Before the thread pools start: arenas are made per thread.
            if not limitMallocArenas(options["malloc-arenas"]):
                log.info("malloc arenas not limited (not glibc)")
        if options["malloc-mmap-threshold"] and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            if not fixMmapThreshold(options["malloc-mmap-threshold"]):
                log.info("malloc mmap threshold not set (not glibc)")
        return buildService(config, reactor)
    except StartupError as e:
        sys.stderr.write(f"twistd directpush: {e}\n")
        raise SystemExit(1)
