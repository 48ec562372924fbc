# -*- test-case-name: tests.test_torture -*-
"""
Hostile HTTP requests for the torture suite: a seeded generator of raw
request bytes in every category the suite names (malformed and truncated
WBXML, wrong content types, huge declared lengths, deep nesting, invalid
UTF-8, bad base64 queries, unknown commands, out-of-range numbers,
oversized headers and bodies), and the check every answer must pass.

Used by L{tests.test_torture} (in process, on a Clock) and by
C{bench/torture.py} (against a real server).
"""

from __future__ import annotations

import base64
import functools
import gzip
import random
import struct
from typing import Iterator, List, Optional, Sequence, Tuple

import attrs

from directpush import wbxml
from directpush.wbxml import E

WBXML_TYPE = "application/vnd.ms-sync.wbxml"
PATH = "/Microsoft-Server-ActiveSync"


@attrs.frozen
class Target:
    """
    Who the hostile requests come from and what they may name.

    @ivar maxBody: the server's --max-body.
    """

    user: str
    password: str
    deviceId: str = "hostile1"
    policyKey: Optional[int] = None
    folderIds: Tuple[str, ...] = ("1", "2", "3")
    serverIds: Tuple[str, ...] = ("1:1",)
    maxBody: int = 1 << 20


@attrs.frozen
class Case:
    category: str
    raw: bytes
    #: No answer is owed (the request is not complete, e.g. a declared
    #: length the body never reaches): the server may wait or time out.
    complete: bool = True


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def request(
    target: Target,
    query: bytes,
    body: bytes = b"",
    contentType: Optional[str] = WBXML_TYPE,
    headers: Sequence[Tuple[bytes, bytes]] = (),
    method: bytes = b"POST",
    version: Optional[bytes] = b"14.1",
    length: Optional[bytes] = None,
    path: bytes = PATH.encode(),
    authorization: Optional[bytes] = None,
) -> bytes:
    lines = [method + b" " + path + (b"?" + query if query else b"") + b" HTTP/1.1", b"Host: localhost"]
    lines.append(b"Authorization: " + (authorization or basic(target.user, target.password)))
    if version is not None:
        lines.append(b"MS-ASProtocolVersion: " + version)
    if target.policyKey is not None:
        lines.append(b"X-MS-PolicyKey: " + str(target.policyKey).encode())
    if contentType is not None and body:
        lines.append(b"Content-Type: " + contentType.encode())
    lines.extend(name + b": " + value for name, value in headers)
    lines.append(b"Content-Length: " + (length if length is not None else str(len(body)).encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def plainQuery(target: Target, command: str, extra: str = "") -> bytes:
    return f"Cmd={command}&User={target.user}&DeviceId={target.deviceId}&DeviceType=iPhone{extra}".encode()


def documents(target: Target, rng: random.Random) -> List[Tuple[str, wbxml.Element]]:
    """
    Well-formed requests of every command, naming the target's folders
    and items (which out-of-range values and mutations then spoil).
    """
    folder = rng.choice(target.folderIds)
    other = rng.choice(target.folderIds)
    item = rng.choice(target.serverIds)
    key = rng.choice(["0", "1", "{00000000-0000-0000-0000-000000000000}1", "999999"])
    body = E("AirSyncBase:BodyPreference", E("Type", "2"), E("TruncationSize", "5120"))
    return [
        ("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", key))),
        ("Sync", E("AirSync:Sync", E("Collections", E("Collection", E("SyncKey", key), E("CollectionId", folder),
                                                        E("WindowSize", "50"), E("Options", E("FilterType", "0"), body))))),
        ("Sync", E("AirSync:Sync", E("Wait", "5"), E("Collections", E("Collection", E("SyncKey", key), E("CollectionId", folder),
                                                                       E("Commands", E("Change", E("ServerId", item), E("ApplicationData", E("Email:Read", "1")))))))),
        ("Ping", E("Ping:Ping", E("HeartbeatInterval", "60"), E("Folders", E("Folder", E("Id", folder), E("Class", "Email"))))),
        ("GetItemEstimate", E("GetItemEstimate:GetItemEstimate", E("Collections", E("Collection", E("AirSync:SyncKey", key), E("CollectionId", folder))))),
        ("ItemOperations", E("ItemOperations:ItemOperations", E("Fetch", E("Store", "Mailbox"), E("AirSync:ServerId", item),
                                                                 E("Options", body)))),
        ("ItemOperations", E("ItemOperations:ItemOperations", E("Fetch", E("Store", "Mailbox"), E("AirSyncBase:FileReference", item + ":1"),
                                                                 E("Options", E("Range", "0-99"))))),
        ("MoveItems", E("Move:MoveItems", E("Move", E("SrcMsgId", item), E("SrcFldId", folder), E("DstFldId", other)))),
        ("Search", E("Search:Search", E("Store", E("Name", "Mailbox"), E("Query", E("And", E("AirSync:CollectionId", folder), E("FreeText", "x"))),
                                         E("Options", E("Range", "0-9"))))),
        ("FolderCreate", E("FolderHierarchy:FolderCreate", E("SyncKey", key), E("ParentId", "0"), E("DisplayName", "t%d" % rng.randrange(10)), E("Type", "12"))),
        ("FolderDelete", E("FolderHierarchy:FolderDelete", E("SyncKey", key), E("ServerId", "999"))),
        ("Settings", E("Settings:Settings", E("UserInformation", E("Get")))),
        ("ResolveRecipients", E("ResolveRecipients:ResolveRecipients", E("To", "nobody"))),
        ("Provision", E("Provision:Provision", E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"))))),
        ("SmartReply", E("ComposeMail:SmartReply", E("ClientId", "c%d" % rng.randrange(1 << 30)),
                         E("Source", E("FolderId", folder), E("ItemId", item)), E("Mime", "Subject: x\r\n\r\nx"))),
    ]


#: Numbers nobody should send.
BAD_NUMBERS = ["-1", "0", "4294967296", "99999999999999999999999", "1e9", "NaN", "0x10", "", " 5", "5 ", "٣", "1.5", "-0"]

#: Elements that carry numbers.
NUMERIC = {"WindowSize", "HeartbeatInterval", "FilterType", "TruncationSize", "Range", "SyncKey", "Type",
           "Wait", "HeartbeatInterval", "Conflict", "MIMESupport", "MIMETruncation", "MaxItems", "Status", "PolicyKey"}


def _mutateNumbers(element: wbxml.Element, rng: random.Random) -> None:
    for child in element.children:
        if child.name in NUMERIC and not child.children and rng.random() < 0.7:
            child.value = rng.choice(BAD_NUMBERS + [str(rng.randrange(-2**70, 2**70))])
        _mutateNumbers(child, rng)


def _header(payload: bytes = b"") -> bytes:
    # Version 1.3, unknown public id, UTF-8, empty string table.
    return b"\x03\x01\x6a\x00" + payload


def _nested(depth: int) -> bytes:
    # AirSync page 0: Sync (0x05), Collections (0x1C) with content.
    return _header(b"\x45" + b"\x5c" * depth + b"\x01" * (depth + 1))


def _badUtf8(rng: random.Random) -> bytes:
    return rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xc0\xaf", b"\x80"])


def _mbuint(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


CATEGORIES = (
    "wbxml-garbage",
    "wbxml-truncated",
    "wbxml-mutated",
    "content-type",
    "huge-length",
    "deep-nesting",
    "invalid-utf8",
    "bad-base64",
    "unknown-command",
    "out-of-range",
    "oversized-headers",
    "oversized-body",
    "bad-http",
)


def generate(target: Target, seed: int, count: int) -> Iterator[Case]:
    """
    C{count} hostile requests, the categories in turn, reproducible from
    C{seed}.
    """
    rng = random.Random(seed)
    makers = {name: globals()["_" + name.replace("-", "_")] for name in CATEGORIES}
    for n in range(count):
        category = CATEGORIES[n % len(CATEGORIES)]
        result = makers[category](target, rng)
        if isinstance(result, Case):
            yield result
        else:
            yield Case(category, result)


def _document(target: Target, rng: random.Random) -> Tuple[str, bytes]:
    command, doc = rng.choice(documents(target, rng))
    return command, wbxml.encode(doc)


def _wbxml_garbage(target: Target, rng: random.Random) -> bytes:
    command, _ = rng.choice(documents(target, rng))
    size = rng.choice([1, 2, 3, 4, 5, 8, 16, 100, 1000, 5000])
    body = bytes(rng.randrange(256) for _ in range(size))
    if rng.random() < 0.5:
        body = _header(body)
    return request(target, plainQuery(target, command), body)


def _wbxml_truncated(target: Target, rng: random.Random) -> bytes:
    command, body = _document(target, rng)
    return request(target, plainQuery(target, command), body[: rng.randrange(1, len(body))])


def _wbxml_mutated(target: Target, rng: random.Random) -> bytes:
    command, body = _document(target, rng)
    data = bytearray(body)
    for _ in range(rng.randint(1, 8)):
        what = rng.random()
        pos = rng.randrange(len(data))
        if what < 0.5:
            data[pos] = rng.randrange(256)
        elif what < 0.7:
            data.insert(pos, rng.choice([0x00, 0x01, 0x02, 0x03, 0x04, 0x40, 0x80, 0x83, 0xC3, 0xFF]))
        elif what < 0.85 and len(data) > 5:
            del data[pos]
        else:
            # An OPAQUE or string-table reference with an absurd length.
            data[pos:pos] = bytes([rng.choice([0xC3, 0x83])]) + _mbuint(rng.choice([2**31, 2**28 - 1, 10**6]))
    return request(target, plainQuery(target, command), bytes(data))


def _content_type(target: Target, rng: random.Random) -> bytes:
    command, body = _document(target, rng)
    choice = rng.randrange(6)
    if choice == 0:
        kind = rng.choice(["text/plain", "application/xml", "application/json", "multipart/form-data; boundary=x",
                           "message/rfc822", "application/vnd.ms-sync.wbxml2", "\x7f", "a" * 300])
        return request(target, plainQuery(target, command), body, kind)
    if choice == 1:
        return request(target, plainQuery(target, command), body, None)
    if choice == 2:
        xml = wbxml.toXML(wbxml.decode(body)).encode("utf-8") if rng.random() < 0.5 else b"<Sync/>"
        return request(target, plainQuery(target, command), xml)
    if choice == 3:
        return request(target, plainQuery(target, command), body, WBXML_TYPE + "; charset=" + rng.choice(["latin-1", "utf-16", ";;;"]))
    if choice == 4:
        return request(target, plainQuery(target, "SendMail"), rng.choice([body, b"\x00" * 100, b"not mime"]), WBXML_TYPE)
    return request(target, plainQuery(target, command), body, "APPLICATION/VND.MS-SYNC.WBXML")


def _huge_length(target: Target, rng: random.Random) -> "bytes | Case":
    query = plainQuery(target, rng.choice(["Sync", "Ping", "FolderSync", "SendMail"]))
    choice = rng.randrange(6)
    if choice == 0:
        return request(target, query, b"\x03\x01\x6a\x00", length=str(rng.choice([target.maxBody + 1, 2**31, 2**63, 10**30])).encode())
    if choice == 1:
        return request(target, query, b"", length=rng.choice([b"-1", b"abc", b"1e9", b"0x10", b"+5", b" ", b"99999999999999999999999999999999"]))
    if choice == 2:
        return request(target, query, b"", headers=[(b"Content-Length", b"5")], length=b"7")
    if choice == 3:
        # Chunked, with an absurd chunk size.
        raw = request(target, query, b"", headers=[(b"Transfer-Encoding", b"chunked")])
        raw = raw.replace(b"Content-Length: 0\r\n", b"")
        return raw + rng.choice([b"FFFFFFFFFFFFFFFF\r\n", b"zz\r\n", b"-5\r\n", b"%x\r\n" % (target.maxBody + 1)]) + b"x" * 10
    if choice == 4:
        raw = request(target, query, b"", headers=[(b"Transfer-Encoding", rng.choice([b"gzip", b"chunked, chunked", b"identity", b"bogus"]))])
        return raw
    # An OPAQUE claiming gigabytes inside a small body.
    return request(target, query, _header(b"\x45\x5c\xc3" + _mbuint(2**31) + b"abc"))


def _deep_nesting(target: Target, rng: random.Random) -> bytes:
    depth = rng.choice([63, 64, 65, 100, 1000, 10000, 100000])
    body = _nested(depth)
    if len(body) > target.maxBody:
        body = _nested(target.maxBody // 2 - 10)
    return request(target, plainQuery(target, "Sync"), body)


def _invalid_utf8(target: Target, rng: random.Random) -> bytes:
    choice = rng.randrange(5)
    bad = _badUtf8(rng)
    if choice == 0:
        # STR_I with bad bytes as a SyncKey / CollectionId / Id.
        payload = b"\x45\x5c\x4f\x4b\x03" + b"abc" + bad + b"\x00\x01\x52\x03" + bad + b"\x00\x01\x01\x01\x01"
        return request(target, plainQuery(target, "Sync"), _header(payload))
    if choice == 1:
        return request(target, plainQuery(target, "Sync", "&CollectionId=%FF%FE"), b"")
    if choice == 2:
        return request(target, plainQuery(target, "FolderSync"), wbxml.encode(E("FolderHierarchy:FolderSync", E("SyncKey", "0"))),
                       headers=[(b"X-Junk", b"\xff\xfe" + bad), (b"MS-ASProtocolVersion", bad)])
    if choice == 3:
        return request(target, plainQuery(target, "FolderSync").replace(target.deviceId.encode(), b"%C3%28"), b"")
    # A string table entry with bad UTF-8, referenced by STR_T.
    table = b"x" + bad + b"\x00"
    payload = b"\x03\x01\x6a" + _mbuint(len(table)) + table + b"\x00\x07\x56\x52\x83\x00\x01\x01"
    return request(target, plainQuery(target, "FolderSync"), payload)


def _bad_base64(target: Target, rng: random.Random) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60)))
        query = base64.b64encode(blob)
    elif choice == 1:
        query = rng.choice([b"!!!!", b"====", b"a", b"ab=", b"%ZZ", b"\xff\xfe", b"a%2", b"A" * 5000])
    elif choice == 2:
        # Valid header, then lengths pointing past the end.
        blob = bytes([141, 0]) + struct.pack("<H", 0x409) + bytes([200]) + b"dev"
        query = base64.b64encode(blob)
    elif choice == 3:
        blob = bytes([141, 0]) + struct.pack("<H", 0x409) + bytes([4]) + b"dev1" + bytes([4]) + b"\x01\x02\x03\x04" + bytes([6]) + b"iPhone"
        blob += bytes([rng.randrange(256), 255]) + b"x" * rng.randrange(0, 300)
        query = base64.b64encode(blob)
    else:
        blob = bytes([rng.randrange(256), rng.randrange(256)]) + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30)))
        query = base64.urlsafe_b64encode(blob)
    return request(target, query, b"")


def _unknown_command(target: Target, rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        name = rng.choice(["Foo", "sync", "SYNC", "Ping ", "", "Sync\x00", "../Sync", "ValidateCert", "MeetingResponse",
                           "GetHierarchy", "A" * 2000])
        return request(target, plainQuery(target, "X").replace(b"Cmd=X", b"Cmd=" + name.encode("latin-1")), b"")
    if choice == 1:
        blob = bytes([141, rng.choice([5, 6, 7, 8, 23, 24, 99, 255])]) + struct.pack("<H", 0x409) + bytes([4]) + b"dev1" + bytes([0]) + bytes([6]) + b"iPhone"
        return request(target, base64.b64encode(blob), b"")
    if choice == 2:
        method = rng.choice([b"GET", b"PUT", b"DELETE", b"PATCH", b"TRACE", b"CONNECT", b"PROPFIND", b"FOO", b"get"])
        return request(target, plainQuery(target, "Sync"), b"", method=method)
    path = rng.choice([b"/", b"/Microsoft-Server-ActiveSync/..", b"/../../etc/passwd", b"/Microsoft-Server-ActiveSync/x/y",
                       b"/%00", b"//Microsoft-Server-ActiveSync", b"/Autodiscover/Autodiscover.xml", b"*"])
    return request(target, plainQuery(target, "Sync"), b"", path=path)


def _out_of_range(target: Target, rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        command, doc = rng.choice(documents(target, rng))
        _mutateNumbers(doc, rng)
        return request(target, plainQuery(target, command), wbxml.encode(doc))
    if choice == 1:
        return request(target, plainQuery(target, "FolderSync"), wbxml.encode(E("FolderHierarchy:FolderSync", E("SyncKey", "0"))),
                       headers=[(b"X-MS-PolicyKey", rng.choice([b"-1", b"4294967296", b"99999999999999999999", b"abc"]))])
    if choice == 2:
        return request(target, plainQuery(target, "FolderSync"), wbxml.encode(E("FolderHierarchy:FolderSync", E("SyncKey", "0"))),
                       version=rng.choice([b"99.9", b"2.5", b"12.0", b"14.1.1", b"", b"1e1", b"-14.1"]))
    extra = rng.choice(["&Occurrence=-1", "&ItemId=" + "9" * 40, "&CollectionId=-1", "&SaveInSent=X", "&AttachmentName=1:1:99999999999999"])
    return request(target, plainQuery(target, rng.choice(["SmartReply", "GetAttachment", "SendMail"]), extra), b"")


def _oversized_headers(target: Target, rng: random.Random) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return request(target, plainQuery(target, "Ping"), b"", headers=[(b"X-Big", b"a" * rng.choice([17000, 70000]))])
    if choice == 1:
        return request(target, plainQuery(target, "Ping"), b"", headers=[(b"X-H%d" % i, b"v") for i in range(rng.choice([501, 2000]))])
    if choice == 2:
        return request(target, plainQuery(target, "Ping", "&CollectionId=" + "1" * rng.choice([1025, 20000])), b"")
    if choice == 3:
        return request(target, plainQuery(target, "Ping"), b"", authorization=b"Basic " + b"QUFB" * rng.choice([1000, 5000]))
    return request(target, plainQuery(target, "Ping"), b"", headers=[(b"X-Folded", b"a"), (b" continued" * 2000, b"")])


def _oversized_body(target: Target, rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    query = plainQuery(target, rng.choice(["Sync", "SendMail", "ItemOperations"]))
    if choice == 0:
        # A gzip bomb: a small body inflating past the limit.
        bomb = _bomb(target.maxBody)
        return request(target, query, bomb, headers=[(b"Content-Encoding", b"gzip")])
    if choice == 1:
        return request(target, query, b"\x1f\x8b\x08\x00garbage", headers=[(b"Content-Encoding", b"gzip")])
    if choice == 2:
        return request(target, query, b"abc", headers=[(b"Content-Encoding", rng.choice([b"br", b"deflate", b"compress", b"gzip, gzip"]))])
    # Chunked body longer than the limit, no declared length.
    raw = request(target, query, b"", headers=[(b"Transfer-Encoding", b"chunked")]).replace(b"Content-Length: 0\r\n", b"")
    chunk = b"x" * 16384
    n = target.maxBody // len(chunk) + 2
    return raw + (b"4000\r\n" + chunk + b"\r\n") * n + b"0\r\n\r\n"


@functools.lru_cache(maxsize=4)
def _bomb(maxBody: int) -> bytes:
    return gzip.compress(b"\x00" * (maxBody + 1024), compresslevel=9)


def _bad_http(target: Target, rng: random.Random) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return rng.choice([b"\r\n\r\n", b"POST\r\n\r\n", b"POST / HTTP/9.9\r\n\r\n", b"POST /\x00 HTTP/1.1\r\n\r\n",
                           b"\x16\x03\x01\x00\x05hello\r\n\r\n", b"GARBAGE GARBAGE GARBAGE GARBAGE\r\n\r\n"])
    if choice == 1:
        return request(target, plainQuery(target, "Sync"), b"", headers=[(b"Bad Header", b"x"), (b":", b"")])
    if choice == 2:
        return request(target, plainQuery(target, "Sync"), b"", authorization=rng.choice(
            [b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon"), b"Basic " + base64.b64encode(b"\xff\xfe:\xff"),
             b"Bearer x", b"NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==", b"Basic", b""]))
    if choice == 3:
        return request(target, plainQuery(target, "Sync"), b"", headers=[(b"Host", b"a"), (b"Host", b"b"), (b"Expect", b"100-continue")])
    return request(target, plainQuery(target, "Sync"), b"", headers=[(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"),
                                                                       (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA")])


@attrs.frozen
class Verdict:
    ok: bool
    code: int
    reason: str = ""


def judge(code: int, headers: "dict[str, str]", body: bytes, throttled: bool = False) -> Verdict:
    """
    Is this an acceptable answer to a hostile request? A clear protocol
    status (200 with WBXML, or empty), an HTTP 4xx, or 501 for a command
    that is not implemented; 503 only with Retry-After when throttling is
    on. Never 500, never a traceback.
    """
    if b"Traceback" in body or b"Unhandled" in body or b"File \"" in body:
        return Verdict(False, code, "traceback in the answer")
    if code == 200:
        kind = headers.get("content-type", "")
        if body and not kind:
            return Verdict(False, code, "200 without a content type")
        return Verdict(True, code)
    if 400 <= code < 500 or code == 501:
        return Verdict(True, code)
    if code == 503 and throttled and "retry-after" in headers:
        return Verdict(True, code)
    return Verdict(False, code, f"HTTP {code}")


def parseResponses(data: bytes) -> Iterator[Tuple[int, "dict[str, str]", bytes]]:
    """
    The HTTP responses in C{data}, in order (Content-Length framed).
    """
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode("latin-1").split("\r\n")
        code = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if not 100 <= code < 200:  # interim answers (100 Continue) carry nothing
            yield code, headers, rest[:length]
        data = rest[length:]


__all__ = ["CATEGORIES", "Case", "Target", "Verdict", "generate", "judge", "parseResponses", "request", "basic", "plainQuery"]



@attrs.frozen
class Victim:
    """
    What user A knows (or guesses) about user B.

    @ivar folderIds: B's folder ids that A does not have.
    @ivar serverIds: B's item ids that do not exist in A's mailbox.
    """

    user: str
    deviceId: str
    policyKey: Optional[int]
    folderIds: Tuple[str, ...]
    serverIds: Tuple[str, ...]


#: Ids that try to climb out of a mailbox or confuse a parser.
PATH_IDS = ("..", "../", "../..", "/", "/etc/passwd", "1/../2", "../b", "../../{user}", "..\\..\\{user}",
            "1:../../{user}/cur", "{user}", "{user}:1", ".{user}", "%2e%2e%2f", "1:1/../..", "\u2025", "." * 300,
            "a" * 5000, "1:" + "9" * 4000, "./1", "1:.", "~{user}")

#: The same in query parameters, where NUL can travel.
QUERY_IDS = ("%00", "1%00", "1:1%00", "..%2F..%2F{user}", "%2F", "1%2F..%2F..", "a" * 1000)


def isolationAttempts(a: Target, b: Victim) -> Iterator[Tuple[str, bytes]]:
    """
    Requests with which A reaches for B's mail: (label, raw request).
    """

    def doc(command: str, element: wbxml.Element, extra: str = "", target: Target = a) -> bytes:
        return request(target, plainQuery(target, command, extra), wbxml.encode(element))

    def fetch(**fields: str) -> wbxml.Element:
        inner = E("Fetch", E("Store", "Mailbox"))
        for name, value in fields.items():
            inner.add(name.replace("_", ":"), value)
        return E("ItemOperations:ItemOperations", inner)

    def sync(collection: str, *commands: wbxml.Element, key: str = "0") -> wbxml.Element:
        c = E("Collection", E("SyncKey", key), E("CollectionId", collection))
        if commands:
            c.add("Commands", *commands)
        return E("AirSync:Sync", E("Collections", c))

    # 1. The User parameter, plain and base64.
    for command, element in (("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", "0"))),
                             ("Sync", sync(a.folderIds[0])),
                             ("ItemOperations", fetch(AirSync_ServerId=a.serverIds[0]))):
        query = plainQuery(a, command).replace(f"User={a.user}".encode(), f"User={b.user}".encode())
        yield f"User={b.user} {command}", request(a, query, wbxml.encode(element))
    blob = bytes([141, 9]) + struct.pack("<H", 0x409) + bytes([len(a.deviceId)]) + a.deviceId.encode()
    blob += (bytes([4]) + struct.pack("<I", a.policyKey)) if a.policyKey is not None else bytes([0])
    blob += bytes([6]) + b"iPhone" + bytes([8, len(b.user)]) + b.user.encode()
    yield "base64 User FolderSync", request(a, base64.b64encode(blob), wbxml.encode(E("FolderHierarchy:FolderSync", E("SyncKey", "0"))))

    # 2. B's folder ids and 3. B's item ids, and 4. ids that climb.
    folders = list(b.folderIds) + [p.format(user=b.user) for p in PATH_IDS]
    items = list(b.serverIds) + [p.format(user=b.user) for p in PATH_IDS]
    for f in folders:
        short = f[:24]
        yield f"Sync {short}", doc("Sync", sync(f))
        yield f"GetItemEstimate {short}", doc("GetItemEstimate", E("GetItemEstimate:GetItemEstimate", E("Collections", E(
            "Collection", E("AirSync:SyncKey", "1"), E("CollectionId", f)))))
        yield f"Ping {short}", doc("Ping", E("Ping:Ping", E("HeartbeatInterval", "60"), E("Folders", E("Folder", E("Id", f), E("Class", "Email")))))
        yield f"FolderDelete {short}", doc("FolderDelete", E("FolderHierarchy:FolderDelete", E("SyncKey", "1"), E("ServerId", f)))
        yield f"FolderUpdate {short}", doc("FolderUpdate", E("FolderHierarchy:FolderUpdate", E("SyncKey", "1"), E("ServerId", f),
                                                           E("ParentId", "0"), E("DisplayName", "stolen")))
        yield f"FolderCreate parent {short}", doc("FolderCreate", E("FolderHierarchy:FolderCreate", E("SyncKey", "1"), E("ParentId", f),
                                                                 E("DisplayName", "x"), E("Type", "12")))
        yield f"FolderCreate name {short}", doc("FolderCreate", E("FolderHierarchy:FolderCreate", E("SyncKey", "1"), E("ParentId", "0"),
                                                               E("DisplayName", f), E("Type", "12")))
        yield f"EmptyFolderContents {short}", doc("ItemOperations", E("ItemOperations:ItemOperations", E(
            "EmptyFolderContents", E("AirSync:CollectionId", f), E("Options", E("DeleteSubFolders")))))
        yield f"MoveItems into {short}", doc("MoveItems", E("Move:MoveItems", E("Move", E("SrcMsgId", a.serverIds[0]),
                                                                               E("SrcFldId", a.serverIds[0].split(":")[0]), E("DstFldId", f))))
        yield f"Search in {short}", doc("Search", E("Search:Search", E("Store", E("Name", "Mailbox"), E("Query", E(
            "And", E("AirSync:CollectionId", f), E("FreeText", "SECRET"))), E("Options", E("Range", "0-99"), E("DeepTraversal")))))
    for i in items:
        short = i[:24]
        folder = i.split(":")[0]
        yield f"Fetch ServerId {short}", doc("ItemOperations", fetch(AirSync_ServerId=i))
        yield f"Fetch LongId {short}", doc("ItemOperations", fetch(Search_LongId=i))
        yield f"Fetch FileReference {short}", doc("ItemOperations", fetch(AirSyncBase_FileReference=i + ":1"))
        yield f"Fetch FileReference bare {short}", doc("ItemOperations", fetch(AirSyncBase_FileReference=i))
        yield f"MoveItems from {short}", doc("MoveItems", E("Move:MoveItems", E("Move", E("SrcMsgId", i), E("SrcFldId", folder),
                                                                             E("DstFldId", a.folderIds[0]))))
        yield f"SmartForward {short}", doc("SmartForward", E("ComposeMail:SmartForward", E("ClientId", "iso"), E(
            "Source", E("FolderId", folder), E("ItemId", i)), E("Mime", f"To: {a.user}\r\nSubject: fw\r\n\r\nx")))
        yield f"SmartReply LongId {short}", doc("SmartReply", E("ComposeMail:SmartReply", E("ClientId", "iso2"), E(
            "Source", E("LongId", i)), E("Mime", f"To: {a.user}\r\nSubject: re\r\n\r\nx")))
        yield f"Sync Delete {short}", doc("Sync", sync(a.folderIds[0], E("Delete", E("ServerId", i)), key="1"))
        yield f"Sync Change {short}", doc("Sync", sync(a.folderIds[0], E("Change", E("ServerId", i), E("ApplicationData", E("Email:Read", "1"))), key="1"))
    for q in list(b.serverIds) + [p.format(user=b.user) for p in QUERY_IDS]:
        short = q[:24]
        folder = q.split(":")[0]
        mime = f"To: {a.user}\r\nSubject: q\r\n\r\nx".encode()
        yield f"GetAttachment {short}", request(a, plainQuery(a, "GetAttachment", f"&AttachmentName={q}:1"), b"", version=b"12.1")
        yield f"SmartForward query {short}", request(a, plainQuery(a, "SmartForward", f"&CollectionId={folder}&ItemId={q}"), mime,
                                                     "message/rfc822", version=b"12.1")
        yield f"SmartReply query LongId {short}", request(a, plainQuery(a, "SmartReply", f"&LongId={q}"), mime, "message/rfc822", version=b"12.1")
        yield f"Sync query {short}", request(a, plainQuery(a, "Sync", f"&CollectionId={q}"), b"")

    # 5. B's DeviceId (and B's policy key).
    impostor = attrs.evolve(a, deviceId=b.deviceId)
    yield "B's DeviceId FolderSync", doc("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", "1")), target=impostor)
    yield "B's DeviceId Sync", doc("Sync", sync(a.folderIds[0], key="1"), target=impostor)
    yield "B's DeviceId Ping", doc("Ping", E("Ping:Ping"), target=impostor)
    yield "B's DeviceId GetItemEstimate", doc("GetItemEstimate", E("GetItemEstimate:GetItemEstimate", E("Collections", E(
        "Collection", E("AirSync:SyncKey", "1"), E("CollectionId", a.folderIds[0])))), target=impostor)
    yield "B's DeviceId Provision ack", doc("Provision", E("Provision:Provision", E("Policies", E("Policy", E(
        "PolicyType", "MS-EAS-Provisioning-WBXML"), E("PolicyKey", str(b.policyKey or 1)), E("Status", "1")))), target=impostor)
    withKey = attrs.evolve(a, deviceId=b.deviceId, policyKey=b.policyKey)
    yield "B's DeviceId and PolicyKey Sync", doc("Sync", sync(a.folderIds[0], key="1"), target=withKey)
    yield "B's PolicyKey own device", doc("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", "0")),
                                          target=attrs.evolve(a, policyKey=b.policyKey))


def unauthenticatedAttempts(a: Target, b: Victim) -> Iterator[Tuple[str, bytes]]:
    """
    Requests without valid credentials: none may reach a handler.
    """
    body = wbxml.encode(E("FolderHierarchy:FolderSync", E("SyncKey", "0")))
    credentials = [
        ("none", None),
        ("wrong password", basic(a.user, a.password + "x")),
        ("B with A's password", basic(b.user, a.password)),
        ("empty user", basic("", a.password)),
        ("empty", b"Basic " + base64.b64encode(b":")),
        ("user with NUL", basic(a.user + "\x00", a.password)),
        ("path user", basic("../" + b.user, a.password)),
        ("long user", basic("a" * 5000, "x")),
        ("bearer", b"Bearer " + base64.b64encode(b.user.encode())),
        ("digest", b'Digest username="' + b.user.encode() + b'"'),
        ("bad base64", b"Basic ****"),
    ]
    for label, authorization in credentials:
        for command in ("FolderSync", "Sync", "ItemOperations", "Ping", "SendMail", "Provision"):
            raw = request(a, plainQuery(a, command), body, authorization=authorization or b"X")
            if authorization is None:
                raw = raw.replace(b"Authorization: X\r\n", b"")
            yield f"{label} {command}", raw
        for method, path in ((b"OPTIONS", b"/Microsoft-Server-ActiveSync"), (b"GET", b"/Microsoft-Server-ActiveSync"),
                             (b"POST", b"/microsoft-server-activesync")):
            raw = request(a, plainQuery(a, "FolderSync"), body, method=method, path=path, authorization=authorization or b"X")
            if authorization is None:
                raw = raw.replace(b"Authorization: X\r\n", b"")
            yield f"{label} {method.decode()} {path.decode()}", raw
