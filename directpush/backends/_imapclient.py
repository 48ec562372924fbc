# -*- test-case-name: tests.test_imapclient -*-
"""
An IMAP client on L{twisted.mail.imap4.IMAP4Client}, extended for what it
lacks and the IMAP backend needs: IDLE (RFC 2177) with untagged responses
routed at once while idling, ENABLE (RFC 5161), SELECT with CONDSTORE /
QRESYNC (RFC 7162) keeping HIGHESTMODSEQ, UIDVALIDITY and UIDNEXT, UID
FETCH with CHANGEDSINCE, UID MOVE (RFC 6851), UID EXPUNGE (RFC 4315),
LIST with SPECIAL-USE (RFC 6154), APPEND with flags, date and BINARY
literals (RFC 3516), and NOTIFY (RFC 5465).

Every command goes through L{IMAPClient.execute}, which returns every
untagged response the command brought, parsed by
L{twisted.mail.imap4.parseNestedParens}, and the tagged line. The base
class's command queue is kept: commands sent while another is pending
wait their turn. This relies on IMAP4Client's private C{_defaultHandler},
C{tags} and C{waiting} (tested in C{tests.test_imapclient} against the
pinned Twisted).
"""

from __future__ import annotations

import base64
import calendar
import re
import time
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

import attrs
from twisted.internet import error, interfaces
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.mail.imap4 import Command, IllegalServerResponse, IMAP4Client, IMAP4Exception, parseNestedParens

log = Logger()

#: A parsed untagged response: atoms are bytes, parenthesised and
#: bracketed groups lists, literals bytes.
Response = List[Any]


class CommandFailed(IMAP4Exception):
    """
    The server answered a command with NO or BAD.

    @ivar status: C{b"NO"} or C{b"BAD"}.
    @ivar code: the response code in brackets (C{b"NONEXISTENT"},
        C{b"ALREADYEXISTS"}, ...), upper case, or C{b""}.
    @ivar text: the rest of the line.
    """

    def __init__(self, status: bytes, line: bytes) -> None:
        super().__init__(line)
        self.status = status
        self.line = line
        m = re.match(rb"\[([A-Za-z0-9-]+)", line)
        self.code = m.group(1).upper() if m else b""

    def __str__(self) -> str:
        return f"{self.status.decode()} {self.line.decode('utf-8', 'replace')}"


@attrs.define
class Result:
    """
    What a command brought back.

    @ivar untagged: the untagged responses, parsed, in order.
    @ivar tagged: the tagged completion after the tag (C{b"OK [...] text"}).
    """

    untagged: List[Response]
    tagged: bytes

    def code(self, name: bytes) -> Optional[List[bytes]]:
        """
        The arguments of response code C{name} in the tagged line or an
        untagged OK, if present (C{[b"APPENDUID", b"17", b"3"]}).
        """
        parsed = _safeParse(self.tagged)
        for response in [parsed] + self.untagged:
            if len(response) >= 2 and response[0] == b"OK" and isinstance(response[1], list):
                codes = response[1]
                if codes and isinstance(codes[0], bytes) and codes[0].upper() == name:
                    return codes
        return None


def _safeParse(line: bytes) -> Response:
    try:
        return parseNestedParens(line)
    except Exception:
        log.warn("unparseable IMAP response: {line!r}", line=line[:200])
        return [line]


@attrs.frozen
class Literal:
    """
    A literal argument: C{binary} sends it as a BINARY literal8
    (C{~{n}}), which may hold NUL.
    """

    data: bytes
    binary: bool = False


Arg = Union[bytes, Literal]


class _Collecting(Command):
    """
    A command that hands back every untagged response it saw, parsed,
    instead of sorting them into "wanted" and "unsolicited" as the base
    class does.
    """

    def finish(self, lastLine: bytes, unusedCallback: Callable[[Any], None]) -> None:
        d, self.defer = self.defer, None
        d.callback(Result([_safeParse(line) for line in self.lines], lastLine))


def quote(value: Union[str, bytes]) -> bytes:
    """
    An IMAP quoted string.
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def astring(value: Union[str, bytes]) -> Arg:
    """
    C{value} as a quoted string, or a literal when it cannot be quoted.
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if any(c in raw for c in b"\r\n\x00") or any(c > 0x7E for c in raw):
        return Literal(raw)
    return quote(raw)


def text(value: Any) -> bytes:
    """
    A parsed string, atom or literal as bytes (quoted strings unescaped).
    """
    if isinstance(value, tuple):
        return value[0]
    if isinstance(value, bytes):
        return re.sub(rb"\\(.)", rb"\1", value)
    raise IllegalServerResponse(repr(value).encode())


def pairs(items: Sequence[Any]) -> Dict[bytes, Any]:
    """
    A FETCH or STATUS item list as a dict with upper-case names.
    """
    out: Dict[bytes, Any] = {}
    i = 0
    while i + 1 < len(items):
        name = items[i]
        if not isinstance(name, bytes):
            i += 1
            continue
        key = name.upper()
        value = items[i + 1]
        if isinstance(value, list) and key in (b"BODY", b"BINARY", b"BODY.PEEK", b"BINARY.PEEK"):
            # BODY[] / BINARY[] parse as a name, a section list, a value
            key += b"[]"
            value = items[i + 2] if i + 2 < len(items) else None
            i += 1
        out[key] = value
        i += 2
    return out


def parseSet(value: bytes) -> List[int]:
    """
    The numbers of an IMAP sequence set such as C{1:3,7}.
    """
    out: List[int] = []
    for part in value.split(b","):
        if b":" in part:
            a, b = (int(x) for x in part.split(b":"))
            out.extend(range(min(a, b), max(a, b) + 1))
        elif part:
            out.append(int(part))
    return out


def formatSet(numbers: Iterable[int]) -> bytes:
    """
    A compact sequence set for C{numbers}.
    """
    ordered = sorted(set(numbers))
    ranges: List[bytes] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(b"%d" % ordered[i] if i == j else b"%d:%d" % (ordered[i], ordered[j]))
        i = j + 1
    return b",".join(ranges)


_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def formatDate(seconds: float) -> bytes:
    """
    An IMAP date-time (whole seconds, UTC).
    """
    t = time.gmtime(int(seconds))
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday,
        _MONTHS[t.tm_mon - 1].encode(),
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


def parseDate(value: bytes) -> float:
    """
    Seconds since the epoch of an IMAP date-time such as
    C{"13-Sep-2020 12:26:40 +0200"}.
    """
    m = re.match(rb"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", value)
    if m is None:
        raise IllegalServerResponse(value)
    day, month, year, hh, mm, ss, sign, zh, zm = m.groups()

    seconds = calendar.timegm(
        (int(year), _MONTHS.index(month.decode().title()) + 1, int(day), int(hh), int(mm), int(ss), 0, 0, 0)
    )
    offset = int(zh) * 3600 + int(zm) * 60
    return float(seconds - offset if sign == b"+" else seconds + offset)


@attrs.define
class Selected:
    """
    What SELECT told about a mailbox.
    """

    name: str
    exists: int = 0
    uidValidity: int = 0
    uidNext: int = 0
    highestModSeq: Optional[int] = None
    vanished: List[int] = attrs.Factory(list)
    fetched: List[Dict[bytes, Any]] = attrs.Factory(list)


def encodeName(name: str) -> bytes:
    """
    A mailbox name in modified UTF-7 (RFC 3501 5.1.3).
    """
    from .maildir import encodeMailboxName

    return encodeMailboxName(name).encode("ascii")


def decodeName(raw: bytes) -> str:
    from .maildir import decodeMailboxName

    try:
        return decodeMailboxName(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


class IMAPClient(IMAP4Client):
    """
    One IMAP connection.

    @ivar capabilities: the server's capabilities, upper case, as last
        announced (greeting, LOGIN's response code, or CAPABILITY).
    @ivar enabled: the extensions ENABLE turned on.
    @ivar onUntagged: called with each untagged response that arrives while
        idling, or while no command is pending.
    @ivar onLost: called with the reason when the connection goes.
    """

    # Large FETCH lines and ESEARCH results: well beyond the default 16k.
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, contextFactory: Any = None) -> None:
        super().__init__(contextFactory)
        self.capabilities: FrozenSet[bytes] = frozenset()
        self.enabled: FrozenSet[bytes] = frozenset()
        self.onUntagged: Optional[Callable[[Response], None]] = None
        self.onLost: Optional[Callable[[Any], None]] = None
        self.greeting: "Deferred[None]" = Deferred()
        self._idleDone: "Deferred[Result]" = succeed(Result([], b""))
        self._idleTag: Optional[bytes] = None
        self._idleStarted: Optional["Deferred[None]"] = None
        self.selected: Optional[str] = None
        self.lost = False

    # transport events

    def serverGreeting(self, caps: Any) -> None:
        if isinstance(caps, dict):
            found = set()
            for name, values in caps.items():
                if values is None:
                    found.add(name.upper())
                else:
                    found.update(name.upper() + b"=" + v.upper() for v in values)
            self.capabilities = frozenset(found)
        d, self.greeting = self.greeting, succeed(None)
        d.callback(None)

    def connectionLost(self, reason: Any) -> None:
        self.lost = True
        super().connectionLost(reason)
        if self._idleStarted is not None:
            d, self._idleStarted = self._idleStarted, None
            d.errback(reason)
        if self.onLost is not None:
            self.onLost(reason)

    def lineReceived(self, line: bytes) -> None:
        # A BINARY literal8 "~{n}" reads like a literal "{n}" to the base
        # class once the "~" is gone.
        if line.endswith(b"}"):
            i = line.rfind(b"{")
            if i > 0 and line[i - 1 : i] == b"~":
                line = line[: i - 1] + line[i:]
        super().lineReceived(line)

    def _defaultHandler(self, tag: bytes, rest: bytes) -> None:
        if tag == b"*" and (self._idleTag is not None and self.waiting == self._idleTag or not self.waiting):
            # While idling the base class would keep these in the IDLE
            # command's lines until DONE; the backend needs them now.
            self._untagged(_safeParse(rest))
            return
        if tag == b"+" and self._idleTag is not None and self.waiting == self._idleTag:
            if self._idleStarted is not None:
                d, self._idleStarted = self._idleStarted, None
                d.callback(None)
            return
        if tag not in (b"*", b"+") and len(rest.split(None, 1)) < 2:
            # "TAG OK" without text: the base class needs some
            rest = rest.strip() + b" -"
        super()._defaultHandler(tag, rest)

    def _untagged(self, response: Response) -> None:
        if response and response[0] == b"CAPABILITY":
            self.capabilities = frozenset(c.upper() for c in response[1:] if isinstance(c, bytes))
        if self.onUntagged is not None:
            try:
                self.onUntagged(response)
            except Exception:
                log.failure("IMAP untagged handler failed")
        if response and response[0] == b"BYE" and self.transport is not None:
            # The server is going (RFC 3501 7.1.5), but may not close the
            # socket soon, or at all (a process left behind by a restart):
            # an idling connection would wait for its end until the next
            # IDLE renewal. Close it, so the connection is made again.
            self.transport.abortConnection()

    # commands

    def execute(self, command: bytes, *args: Arg) -> "Deferred[Result]":
        """
        Send C{command} with C{args} (joined by spaces; literals sent as
        LITERAL+ allows, else after the server's continuation).

        @return: fires with the L{Result}, or fails with L{CommandFailed}.
        """
        if self.lost:
            from twisted.internet.error import ConnectionLost

            return fail(ConnectionLost("IMAP connection already lost"))
        nonSync = b"LITERAL+" in self.capabilities
        chunks: List[bytes] = []  # text up to each synchronising literal
        pending: List[bytes] = [b""]
        first = True
        for arg in args:
            sep = b"" if first else b" "
            first = False
            if isinstance(arg, Literal):
                prefix = b"~" if arg.binary else b""
                if nonSync:
                    pending[-1] += sep + prefix + b"{%d+}\r\n" % len(arg.data) + arg.data
                else:
                    pending[-1] += sep + prefix + b"{%d}" % len(arg.data)
                    chunks.append(pending.pop())
                    pending.append(arg.data)
            else:
                pending[-1] += sep + arg
        chunks.append(pending.pop())
        head, rest = chunks[0], chunks[1:]

        def continuation(_line: bytes) -> None:
            if rest:
                self.sendLine(rest.pop(0))

        cmd = _Collecting(command, head or None, (), continuation)
        d: "Deferred[Result]" = self.sendCommand(cmd)

        def check(result: Result) -> Result:
            for response in result.untagged:
                if response and response[0] == b"CAPABILITY":
                    self.capabilities = frozenset(c.upper() for c in response[1:] if isinstance(c, bytes))
            codes = result.code(b"CAPABILITY")
            if codes:
                self.capabilities = frozenset(c.upper() for c in codes[1:] if isinstance(c, bytes))
            return result

        def failed(f: Any) -> Any:
            if f.check(IMAP4Exception) and not f.check(CommandFailed) and isinstance(f.value.args[0], bytes):
                line = f.value.args[0]
                # the base class drops the status word: NO and BAD alike
                return fail(CommandFailed(b"NO", line))
            return f

        return d.addCallbacks(check, failed)

    async def capability(self) -> FrozenSet[bytes]:
        result = await self.execute(b"CAPABILITY")
        return self.capabilities if result else self.capabilities

    async def startTLSNow(self, contextFactory: Any) -> None:
        """
        STARTTLS (RFC 3501 6.2.1), then ask for the capabilities again.
        """
        if b"STARTTLS" not in self.capabilities:
            await self.capability()
        if b"STARTTLS" not in self.capabilities:
            raise IMAP4Exception("the server offers no STARTTLS")
        await self.execute(b"STARTTLS")
        tls = interfaces.ITLSTransport(self.transport)
        tls.startTLS(contextFactory)
        self.startedTLS = True
        self.capabilities = frozenset()
        await self.capability()

    async def loginAs(self, user: str, password: str) -> None:
        """
        AUTHENTICATE PLAIN where offered (UTF-8 safe), LOGIN otherwise.
        """
        if not self.capabilities:
            await self.capability()
        u, p = user.encode("utf-8"), password.encode("utf-8")
        if b"AUTH=PLAIN" in self.capabilities and b"SASL-IR" in self.capabilities:
            token = base64.b64encode(b"\x00" + u + b"\x00" + p)
            await self.execute(b"AUTHENTICATE", b"PLAIN", token)
        else:
            await self.execute(b"LOGIN", astring(u), astring(p))
        if not any(c.startswith(b"IMAP4REV") for c in self.capabilities):
            await self.capability()

    async def enable(self, *extensions: bytes) -> FrozenSet[bytes]:
        """
        ENABLE those of C{extensions} the server offers; return the enabled.
        """
        wanted = [e for e in extensions if e in self.capabilities]
        if not wanted or b"ENABLE" not in self.capabilities:
            return self.enabled
        result = await self.execute(b"ENABLE", *wanted)
        for response in result.untagged:
            if response and response[0] == b"ENABLED":
                self.enabled |= frozenset(e.upper() for e in response[1:] if isinstance(e, bytes))
        return self.enabled

    async def listMailboxes(self) -> List[Tuple[FrozenSet[bytes], Optional[str], bytes]]:
        """
        LIST "" "*" (with RETURN (SPECIAL-USE) when offered): each mailbox's
        attributes (upper case), delimiter and raw (modified UTF-7) name.
        """
        args: List[Arg] = [b'""', b'"*"']
        if b"SPECIAL-USE" in self.capabilities and b"LIST-EXTENDED" in self.capabilities:
            args += [b"RETURN", b"(SPECIAL-USE)"]
        result = await self.execute(b"LIST", *args)
        out = []
        for response in result.untagged:
            if len(response) >= 4 and response[0] == b"LIST":
                attributes = frozenset(a.upper() for a in response[1] if isinstance(a, bytes))
                delimiter = None if response[2] == b"NIL" else text(response[2]).decode()
                out.append((attributes, delimiter, text(response[3])))
        return out

    async def select(self, name: bytes, qresync: Optional[Tuple[int, int]] = None, readOnly: bool = False) -> Selected:  # type: ignore[override]
        """
        SELECT (or EXAMINE) a mailbox, with CONDSTORE when enabled, and
        QRESYNC C{(uidvalidity, modseq)} when given and enabled.
        """
        args: List[Arg] = [astring(name)]
        if qresync is not None and b"QRESYNC" in self.enabled:
            args.append(b"(QRESYNC (%d %d))" % qresync)
        elif b"CONDSTORE" in self.capabilities and b"QRESYNC" not in self.enabled and b"CONDSTORE" not in self.enabled:
            args.append(b"(CONDSTORE)")
        self.selected = None
        result = await self.execute(b"EXAMINE" if readOnly else b"SELECT", *args)
        selected = Selected(decodeName(name))
        for r in result.untagged + [_safeParse(result.tagged)]:
            if len(r) >= 2 and r[1] == b"EXISTS":
                selected.exists = int(r[0])
            elif len(r) >= 2 and r[0] == b"OK" and isinstance(r[1], list) and len(r[1]) >= 2:
                code, value = r[1][0].upper(), r[1][1]
                if code == b"UIDVALIDITY":
                    selected.uidValidity = int(value)
                elif code == b"UIDNEXT":
                    selected.uidNext = int(value)
                elif code == b"HIGHESTMODSEQ":
                    selected.highestModSeq = int(value)
            elif len(r) >= 2 and r[0] == b"VANISHED":
                selected.vanished.extend(parseSet(r[-1]))
            elif len(r) >= 3 and r[1] == b"FETCH":
                selected.fetched.append(pairs(r[2]))
        self.selected = selected.name
        return selected

    async def uidFetch(
        self, uids: bytes, items: bytes, changedSince: Optional[int] = None, vanished: bool = False
    ) -> Tuple[List[Dict[bytes, Any]], List[int]]:
        """
        UID FETCH; return the FETCH item dicts that carry a UID, and the
        uids a VANISHED response named.
        """
        args: List[Arg] = [uids, items]
        if changedSince is not None:
            modifiers = b"CHANGEDSINCE %d" % changedSince
            if vanished:
                modifiers += b" VANISHED"
            args.append(b"(" + modifiers + b")")
        result = await self.execute(b"UID FETCH", *args)
        fetched, gone = [], []
        for r in result.untagged:
            if len(r) >= 3 and r[1] == b"FETCH" and isinstance(r[2], list):
                item = pairs(r[2])
                if b"UID" in item:
                    fetched.append(item)
            elif len(r) >= 2 and r[0] == b"VANISHED":
                gone.extend(parseSet(r[-1]))
        return fetched, gone

    async def uidSearchAll(self) -> List[int]:
        """
        Every uid of the selected mailbox (ESEARCH's compact form when
        offered).
        """
        if b"ESEARCH" in self.capabilities:
            result = await self.execute(b"UID SEARCH", b"RETURN", b"(ALL)", b"ALL")
            for r in result.untagged:
                if r and r[0] == b"ESEARCH":
                    for i, v in enumerate(r):
                        if isinstance(v, bytes) and v.upper() == b"ALL" and i + 1 < len(r):
                            return parseSet(r[i + 1])
            return []
        result = await self.execute(b"UID SEARCH", b"ALL")
        out: List[int] = []
        for r in result.untagged:
            if r and r[0] == b"SEARCH":
                out.extend(int(x) for x in r[1:] if isinstance(x, bytes) and x.isdigit())
        return out

    async def append(  # type: ignore[override]
        self, name: bytes, raw: bytes, flags: Sequence[bytes] = (), date: Optional[float] = None
    ) -> Tuple[Optional[int], Optional[int]]:
        """
        APPEND C{raw} (as a BINARY literal where offered); return the
        (uidvalidity, uid) of APPENDUID, if the server said it.
        """
        args: List[Arg] = [astring(name), b"(" + b" ".join(flags) + b")"]
        if date is not None:
            args.append(formatDate(date))
        args.append(Literal(raw, binary=b"BINARY" in self.capabilities))
        result = await self.execute(b"APPEND", *args)
        codes = result.code(b"APPENDUID")
        if codes and len(codes) >= 3:
            return int(codes[1]), int(codes[2])
        return None, None

    async def uidMove(self, uids: bytes, destination: bytes) -> Optional[Dict[int, int]]:
        """
        UID MOVE where offered, else UID COPY, STORE \\Deleted and UID
        EXPUNGE; return the old -> new uid map of COPYUID, if said.
        """
        if b"MOVE" in self.capabilities:
            result = await self.execute(b"UID MOVE", uids, astring(destination))
        else:
            result = await self.execute(b"UID COPY", uids, astring(destination))
            await self.execute(b"UID STORE", uids, b"+FLAGS.SILENT", b"(\\Deleted)")
            await self.uidExpunge(uids)
        codes = result.code(b"COPYUID")
        if codes and len(codes) >= 4:
            return dict(zip(parseSet(codes[2]), parseSet(codes[3])))
        return None

    async def uidExpunge(self, uids: bytes) -> None:
        """
        UID EXPUNGE where offered (only these messages), else EXPUNGE.
        """
        if b"UIDPLUS" in self.capabilities:
            await self.execute(b"UID EXPUNGE", uids)
        else:
            await self.execute(b"EXPUNGE")

    def idle(self) -> "Deferred[None]":
        """
        Start IDLE (after any pending command); fires once the server has
        accepted it. Untagged responses go to L{onUntagged} at once until
        L{done}.
        """
        self._idleStarted = started = Deferred()
        cmd = _Collecting(b"IDLE", None, (), lambda line: None)
        self._idleCmd: Optional[Command] = cmd
        # A connection lost while idling ends IDLE too: not an error here.
        self._idleDone = self.sendCommand(cmd).addErrback(
            lambda f: None if f.check(error.ConnectionLost, error.ConnectionDone) else f
        )
        self._noticeIdleSent()
        return started

    def _noticeIdleSent(self) -> None:
        cmd = getattr(self, "_idleCmd", None)
        if cmd is not None and self.waiting is not None and self.tags.get(self.waiting) is cmd:
            self._idleTag = self.waiting
            self._idleCmd = None

    def _flushQueue(self) -> None:
        super()._flushQueue()
        self._noticeIdleSent()

    def done(self) -> "Deferred[Result]":
        """
        End IDLE; fires when the server completed it.
        """
        d = self._idleDone
        if self._idleTag is not None:
            self.sendLine(b"DONE")
        self._idleTag = None
        return d

    @property
    def idling(self) -> bool:
        return self._idleTag is not None

    async def notify(self, events: bytes = b"(personal (MessageNew MessageExpunge FlagChange))") -> bool:
        """
        NOTIFY SET (RFC 5465) where offered; return whether it is on.
        """
        if b"NOTIFY" not in self.capabilities:
            return False
        await self.execute(b"NOTIFY SET", events)
        return True
