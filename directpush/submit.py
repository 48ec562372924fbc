# -*- test-case-name: tests.test_submit -*-
"""
Mail submission (EAS SendMail, SmartReply, SmartForward): local
recipients get the message in their Inbox directly; everyone else gets it
through one SMTP transaction with a smarthost.

The SMTP client is Twisted's L{ESMTPSenderFactory}, built here and
connected through an endpoint, never with L{twisted.mail.smtp.sendmail}
(which uses the global reactor and makes TLS optional). Its traps, and
what this module does about each:

  - C{SMTPSenderFactory} retries by calling C{connector.connect()}, which
    an endpoint never gives it: with retries left, a 4xx or a lost
    connection would leave its Deferred unfired for ever. We use
    C{retries=0} and fail the Deferred ourselves when the connection is
    lost before the result is known.
  - Its idle timeout calls the global reactor (C{TimeoutMixin.callLater});
    each protocol gets the injected clock's C{callLater}.
  - C{hostname=} is not the HELO name but the name that
    L{ESMTPSender} would verify a STARTTLS certificate against; the HELO
    name is the factory's C{domain}. We pass STARTTLS options explicitly
    and never C{hostname}.
  - The client turns every C{\\n} into C{\\r\\n} and dot-stuffs each
    16 KiB chunk separately, so CRLF messages went out with C{\\r\\r\\n}
    and a C{.} line at a chunk edge went out unstuffed. We hand it the
    finished DATA bytes and make its per-chunk transform a no-op.
  - Its session log and the C{str()} of its errors hold the AUTH
    exchange (the password, base64). The log is off, and errors are
    reported by code and server text only.
  - Behind C{tls:} the transport does not provide C{ISSLTransport}, so the
    client would try STARTTLS inside TLS; the protocol is told it is
    already secure.
"""

from __future__ import annotations

import ipaddress
import re
from io import BytesIO
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    NoReturn,
    Optional,
    Sequence,
    Tuple,
)

import attrs
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.mail.smtp import (
    SUCCESS,
    ESMTPSender,
    ESMTPSenderFactory,
    SMTPClientError,
    SMTPConnectError,
    SMTPDeliveryError,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IDirectory, IMailboxBackend, ISubmission
from .model import FolderType
from .protocol import mail
from .protocol.core import findByMessageId

log = Logger()

#: Seconds to wait for each smarthost response (RFC 5321 4.5.3.2 asks for
#: minutes; a phone waiting on SendMail gives up sooner anyway).
SMTP_TIMEOUT = 120.0

#: An address we are willing to put in an SMTP command or a header:
#: printable ASCII, no spaces, no angle brackets (nothing that could end
#: the command or the header line). No SMTPUTF8.
_ADDRESS = re.compile(r"[!-;=?-~]{1,254}\Z")


class SubmissionError(Exception):
    """
    A message could not be delivered to some recipients.

    @ivar permanent: C{True} when retrying cannot help (a 5xx reply, an
        invalid address, no smarthost); C{False} for 4xx replies, timeouts
        and connection failures. The protocol answers SendMail with status
        120/116 accordingly.
    @ivar message: what went wrong, fit for the log and the user; never
        holds message content or credentials.
    """

    def __init__(self, permanent: bool, message: str) -> None:
        super().__init__(permanent, message)
        self.permanent = permanent
        self.message = message

    def __str__(self) -> str:
        kind = "permanent" if self.permanent else "temporary"
        return f"{kind} submission failure: {self.message}"


@attrs.frozen
class TLSMode:
    """
    How a smarthost connection is protected (L{endpointFromString} makes
    these from its description).

    @ivar implicit: the endpoint speaks TLS from the first byte (C{tls:},
        port 465); STARTTLS is then neither needed nor attempted.
    @ivar startTLSOptions: what to verify a STARTTLS upgrade with, or
        L{None} to never attempt one.
    @ivar required: refuse to send unless the session is protected by TLS
        (implicit, or a successful STARTTLS); pass this as the
        C{requireTLS} of L{Submission}.
    """

    implicit: bool = False
    startTLSOptions: Optional[IOpenSSLClientConnectionCreator] = None
    required: bool = True


def isLoopback(host: str) -> bool:
    """
    Is C{host} C{localhost} or a loopback address (127.0.0.0/8, ::1)?
    Other names are not resolved: a name that merely resolves to a
    loopback address does not count.
    """
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _trustRoot(caFile: Optional[str]) -> Any:
    """
    The trust root for smarthost certificates: the platform's, or the
    certificates of the PEM file C{caFile} (read now: call at start-up).
    """
    if caFile is None:
        return None
    with open(caFile, "rb") as f:
        pem = f.read()
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, flags=re.DOTALL
    )
    if not blocks:
        raise ValueError(f"{caFile}: no PEM certificate found")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


def endpointFromString(
    reactor: Any, description: str, allowPlaintext: bool, caFile: Optional[str] = None
) -> Tuple[IStreamClientEndpoint, TLSMode]:
    """
    The smarthost endpoint and its TLS mode, from a short description.

    Two forms are accepted (an IPv6 host goes in brackets, C{[::1]}):

      - C{tls:HOST:PORT}: TLS from the first byte (port 465, "submissions"),
        the certificate verified against HOST, with the platform's trust
        store or the certificates of C{caFile}.
      - C{tcp:HOST:PORT}: a TCP connection upgraded with STARTTLS (port
        587). To a loopback HOST (C{localhost}, 127.0.0.0/8, ::1: a local
        MTA) no TLS is attempted or required. To any other HOST it is
        refused unless C{allowPlaintext}; even then STARTTLS is required
        and verified like C{tls:}, so neither credentials nor mail cross
        the network in clear, and a server that does not offer STARTTLS
        (or a man in the middle stripping it) fails the submission.

    Anything else (another endpoint type, Twisted's C{key=value} syntax)
    is refused: this is not L{clientFromString}, whose plugins could make
    connections this function cannot vouch for.

    @param reactor: the reactor to connect with (L{HostnameEndpoint}
        needs TCP, time and name resolution).
    @param allowPlaintext: the operator's explicit consent to a C{tcp:}
        smarthost that is not on this machine.
    @param caFile: a PEM file of the certificates to trust instead of the
        platform's; read at once.

    @raise ValueError: for a description that is malformed or refused;
        the message says why.
    """
    scheme, sep, rest = description.partition(":")
    scheme = scheme.strip().lower()
    usage = "expected tls:HOST:PORT or tcp:HOST:PORT (IPv6 host in brackets)"
    if not sep or scheme not in ("tls", "tcp"):
        raise ValueError(f"smarthost {description!r}: {usage}")
    host, sep, portText = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or "=" in rest or ":" in host and not _isIPv6(host):
        raise ValueError(f"smarthost {description!r}: {usage}")
    try:
        port = int(portText)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ValueError(f"smarthost {description!r}: port must be a number from 1 to 65535")

    tcp = HostnameEndpoint(reactor, host, port, timeout=30)
    if scheme == "tls":
        options = ssl.optionsForClientTLS(host, trustRoot=_trustRoot(caFile))
        return wrapClientTLS(options, tcp), TLSMode(implicit=True, required=True)
    if isLoopback(host):
        return tcp, TLSMode(required=False)
    if not allowPlaintext:
        raise ValueError(
            f"smarthost {description!r}: tcp: to a host other than this machine is refused; "
            "use tls:HOST:465, or allow STARTTLS connections explicitly"
        )
    options = ssl.optionsForClientTLS(host, trustRoot=_trustRoot(caFile))
    return tcp, TLSMode(startTLSOptions=options, required=True)


def _isIPv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def validAddress(address: str) -> bool:
    """
    Can C{address} go into an SMTP command and a header line as it is?
    """
    return _ADDRESS.match(address) is not None


def smtpData(raw: bytes) -> bytes:
    """
    C{raw} as the bytes of an SMTP DATA section, before the final C{.}
    line: CRLF line ends (bare LF ones converted), every line that starts
    with C{.} stuffed with another, and a final line end.
    """
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line[:1] == b"." else line) + b"\r\n" for line in lines)


def withReturnPath(sender: str, raw: bytes) -> bytes:
    """
    C{raw} with a C{Return-Path:} header line on top, as a final delivery
    adds it (RFC 5321 4.4), ending lines the way C{raw} does.
    """
    firstEnd = raw.find(b"\n")
    eol = b"\r\n" if firstEnd < 0 or raw[firstEnd - 1 : firstEnd] == b"\r" else b"\n"
    return b"Return-Path: <" + sender.encode("ascii") + b">" + eol + raw


def _describeReplies(replies: Iterable[Tuple[bytes, int, bytes]]) -> str:
    return "; ".join(
        f"{addr.decode('ascii', 'replace')}: {code} {resp.decode('utf-8', 'replace')[:200]}"
        for addr, code, resp in replies
    )


def _isPermanent(code: int) -> bool:
    return 500 <= code < 600


class _Sender(ESMTPSender):
    """
    L{ESMTPSender} fixed for use through an endpoint (see the module
    docstring).
    """

    # No session log: it would hold the AUTH exchange.
    debug = False

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.factory.implicitTLS:
            # The TLS endpoint's transport does not provide ISSLTransport.
            self._tlsMode = True

    def transformChunk(self, chunk: bytes) -> bytes:
        # smtpData() already did line ends and dot-stuffing for the whole
        # message; per chunk, both go wrong.
        self.resetTimeout()
        return chunk

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        factory = self.factory
        if not factory.sendFinished:
            factory.sendFinished = True
            factory.result.errback(SMTPConnectError(-1, b"connection lost before the reply"))


class _SenderFactory(ESMTPSenderFactory):
    """
    Builds one L{_Sender} timing out on C{clock}.
    """

    protocol = _Sender

    def __init__(self, *args: Any, clock: IReactorTime, implicitTLS: bool, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.clock = clock
        self.implicitTLS = implicitTLS

    def buildProtocol(self, addr: Any) -> _Sender:
        p: _Sender = super().buildProtocol(addr)
        p.callLater = self.clock.callLater  # type: ignore[method-assign]
        return p


@implementer(ISubmission)
class Submission:
    """
    Delivers submitted mail: to local users' Inboxes through the mailbox
    backend, to everyone else through a smarthost.

    Remote delivery goes first: it is the part likely to fail, and a
    failure then leaves no local copies that a retry would duplicate.
    """

    def __init__(
        self,
        directory: IDirectory,
        backend: IMailboxBackend,
        smarthost: Optional[IStreamClientEndpoint],
        clock: IReactorTime,
        heloName: str,
        credentials: Optional[Callable[[], Tuple[str, str]]] = None,
        requireTLS: bool = True,
        tlsMode: TLSMode = TLSMode(),
        timeout: float = SMTP_TIMEOUT,
        userCredentials: Optional[Callable[[str], Optional[Tuple[str, str]]]] = None,
    ) -> None:
        """
        @param directory: tells local recipients from remote ones.
        @param backend: holds local users' mailboxes.
        @param smarthost: where remote mail goes, or L{None} to refuse it.
        @param clock: times out a silent smarthost.
        @param heloName: the name to greet the smarthost with (EHLO).
        @param credentials: returns the smarthost user and password, asked
            for each connection (so a rotated password is picked up); with
            it AUTH is required, without it AUTH is never attempted.
        @param userCredentials: without C{credentials}, returns the
            submitting user's own user name and password (the IMAP bridge
            passes its logins through), used for AUTH whenever the
            smarthost offers it.
        @param requireTLS: refuse to send over a session not protected by
            TLS (implicit, or STARTTLS with C{tlsMode.startTLSOptions}).
            Pass C{tlsMode.required} from L{endpointFromString}.
        @param tlsMode: how C{smarthost} is protected.
        @param timeout: seconds to wait for each smarthost reply.
        """
        self._directory = directory
        self._backend = backend
        self._smarthost = smarthost
        self._clock = clock
        # Encoded now, so that a name SMTP cannot carry fails at start-up.
        self._heloName = heloName.encode("ascii")
        self._credentials = credentials
        self._userCredentials = userCredentials
        self._requireTLS = requireTLS
        self._tlsMode = tlsMode
        self._timeout = timeout

    def submit(
        self, user: str, sender: str, recipients: Sequence[str], raw: bytes, retrySince: Optional[float] = None
    ) -> "Deferred[None]":
        """
        Deliver C{raw} from C{sender} to C{recipients}; fails with
        L{SubmissionError}. A retry (C{retrySince}) skips local recipients
        who already have the message; the smarthost gets it again, as SMTP
        cannot tell whether it took it before.
        """
        return Deferred.fromCoroutine(self._submit(user, sender, recipients, raw, retrySince))

    async def _submit(
        self, user: str, sender: str, recipients: Sequence[str], raw: bytes, retrySince: Optional[float] = None
    ) -> None:
        if sender and not validAddress(sender):
            log.warn("submission by {user} refused: invalid sender address", user=user)
            raise SubmissionError(True, "invalid sender address")
        bad = [r for r in recipients if not validAddress(r)]
        if bad:
            log.warn(
                "submission by {user} refused: {count} invalid recipient addresses",
                user=user,
                count=len(bad),
            )
            raise SubmissionError(True, f"invalid recipient address {bad[0][:100]!r}")
        if not recipients:
            raise SubmissionError(True, "no recipients")

        localUsers: List[str] = []
        remote: Dict[str, str] = {}  # lower-case address -> address, first spelling
        for address in recipients:
            key = address.lower()
            if key in remote:
                continue
            local = await self._directory.localUser(address)
            if local is None:
                remote[key] = address
            elif local not in localUsers:
                localUsers.append(local)
        remoteAddresses = list(remote.values())
        if remoteAddresses and self._smarthost is None:
            log.warn(
                "submission by {user} refused: {count} remote recipients and no smarthost",
                user=user,
                count=len(remoteAddresses),
            )
            raise SubmissionError(True, "no smarthost configured")
        if any("@" not in a for a in remoteAddresses):
            raise SubmissionError(True, "a recipient is neither a local user nor an e-mail address")

        if remoteAddresses:
            await self._relay(user, sender, remoteAddresses, raw)
        if localUsers:
            await self._deliverLocally(user, sender, localUsers, raw, retrySince)
        log.info(
            "submission by {user} delivered: {local} local, {remote} remote recipients",
            user=user,
            local=len(localUsers),
            remote=len(remoteAddresses),
        )

    async def _deliverLocally(
        self, user: str, sender: str, localUsers: List[str], raw: bytes, retrySince: Optional[float]
    ) -> None:
        message = withReturnPath(sender, raw)
        messageId = mail.summary(raw).messageId if retrySince is not None else None
        for recipient in localUsers:
            try:
                mailbox = await self._backend.mailbox(recipient)
                folders = await mailbox.folders()
                inbox = next(f for f in folders if f.type == FolderType.INBOX)
                if messageId and await findByMessageId(mailbox, inbox.id, messageId, retrySince or 0.0):
                    log.info(
                        "local delivery to {recipient} (submitted by {user}) was done before a crash: not repeated",
                        recipient=recipient, user=user,
                    )
                    continue
                await mailbox.append(inbox.id, message)
            except Exception:
                log.failure(
                    "local delivery to {recipient} (submitted by {user}) failed",
                    recipient=recipient,
                    user=user,
                )
                raise SubmissionError(False, f"local delivery to {recipient} failed") from None

    async def _relay(self, user: str, sender: str, recipients: List[str], raw: bytes) -> None:
        assert self._smarthost is not None
        username: Optional[bytes] = None
        password: Optional[bytes] = None
        requireAuth = self._credentials is not None
        if self._credentials is not None:
            name, secret = self._credentials()
            username, password = name.encode("utf-8"), secret.encode("utf-8")
        elif self._userCredentials is not None:
            # The IMAP bridge: the sender's own login, used for AUTH when
            # the smarthost offers it.
            own = self._userCredentials(user)
            if own is not None:
                username, password = own[0].encode("utf-8"), own[1].encode("utf-8")
        result: Deferred[Tuple[int, List[Tuple[bytes, int, bytes]]]] = Deferred()
        factory = _SenderFactory(
            username,
            password,
            sender,
            recipients,
            BytesIO(smtpData(raw)),
            result,
            retries=0,
            timeout=self._timeout,
            contextFactory=None if self._tlsMode.implicit else self._tlsMode.startTLSOptions,
            heloFallback=True,
            requireAuthentication=requireAuth,
            requireTransportSecurity=self._requireTLS,
            clock=self._clock,
            implicitTLS=self._tlsMode.implicit,
        )
        factory.domain = self._heloName

        try:
            protocol = await self._smarthost.connect(factory)
        except CancelledError:
            raise
        except Exception as e:
            log.warn(
                "relaying for {user} to {count} recipients failed: cannot connect: {reason}",
                user=user,
                count=len(recipients),
                reason=str(e)[:200],
            )
            raise SubmissionError(False, "cannot connect to the smarthost") from None

        def abort(_: Deferred[Any]) -> None:
            # The phone gave up: drop the session before the final "." is
            # acknowledged, so that the smarthost discards the message.
            factory.sendFinished = True
            protocol.transport.abortConnection()

        # A cancellable view of the factory's Deferred, which must not be
        # cancelled itself (the factory deletes its reference once it fires).
        outcome: Deferred[Tuple[int, List[Tuple[bytes, int, bytes]]]] = Deferred(abort)

        def forward(r: Any) -> None:
            if not outcome.called:
                outcome.callback(r)

        def forwardFailure(f: Failure) -> None:
            if not outcome.called:
                outcome.errback(f)

        result.addCallbacks(forward, forwardFailure)
        try:
            numOk, replies = await outcome
        except SMTPDeliveryError as e:
            self._relayFailed(user, recipients, e.code, e.resp, e.addresses or [])
        except SMTPClientError as e:
            self._relayFailed(user, recipients, e.code, e.resp, [])
        rejected = [r for r in replies if r[1] not in SUCCESS]
        if rejected:
            # The smarthost took the message for the others; we cannot
            # bounce, so the phone is told (and a retry duplicates it for
            # those who got it: no better option without a queue).
            permanent = all(_isPermanent(code) for _, code, _ in rejected)
            log.warn(
                "relaying for {user}: {rejected} of {count} recipients refused: {replies}",
                user=user,
                rejected=len(rejected),
                count=len(recipients),
                replies=_describeReplies(rejected),
            )
            raise SubmissionError(permanent, f"refused: {_describeReplies(rejected)}")
        log.info("relayed for {user} to {count} recipients", user=user, count=numOk)

    def _relayFailed(
        self,
        user: str,
        recipients: List[str],
        code: int,
        resp: Any,
        replies: Sequence[Tuple[bytes, int, bytes]],
    ) -> NoReturn:
        """
        Log and raise the L{SubmissionError} for a failed SMTP transaction.
        When every recipient was refused, the failure is permanent if every
        refusal is (the client reports only the last RCPT's code).
        """
        text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
        rejected = [r for r in replies if r[1] not in SUCCESS]
        if rejected and len(rejected) == len(replies):
            permanent = all(_isPermanent(c) for _, c, _ in rejected)
            detail = _describeReplies(rejected)
        else:
            permanent = _isPermanent(code)
            detail = f"{code} {text[:200]}"
        log.warn(
            "relaying for {user} to {count} recipients failed: {detail}",
            user=user,
            count=len(recipients),
            detail=detail,
        )
        raise SubmissionError(permanent, f"smarthost: {detail}")
