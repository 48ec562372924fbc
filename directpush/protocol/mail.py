# -*- test-case-name: tests.test_mail -*-
"""
Raw RFC 5322 messages turned into EAS email data (MS-ASEMAIL, MS-ASAIRS,
MS-ASCON), and the few message rewrites the protocol needs (SendMail,
SmartReply, SmartForward).

Sans-I/O: the standard library's C{email} package and L{directpush.wbxml}
only. Mail comes from the outside world, so nothing here trusts it: every
public function that reads a message returns something useful for I{any}
input bytes and never raises, because one malformed message must not stop
a whole folder from syncing.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import html
import io
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import message_from_bytes, policy as emailPolicy
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.policy import Compat32
from email.utils import getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..wbxml import E, Element

__all__ = [
    "Attachment",
    "BodyPreference",
    "MailOptions",
    "MessageSummary",
    "applicationData",
    "attachment",
    "attachmentParts",
    "decodeHeader",
    "draftMessage",
    "flagElement",
    "htmlToText",
    "parseFlagChange",
    "parseOptions",
    "plainText",
    "quoteForReply",
    "stripBcc",
    "summary",
    "textToHTML",
    "walkParts",
]

# Body types (MS-ASAIRS 2.2.2.22.1).
PLAIN = 1
HTML = 2
RTF = 3
MIME = 4

#: MIMETruncation codes (MS-ASCMD 2.2.3.108) to sizes in characters; 8 and
#: anything unknown mean "send it all".
MIME_TRUNCATION: Dict[int, int] = {
    0: 0,
    1: 4096,
    2: 5120,
    3: 7168,
    4: 10240,
    5: 20480,
    6: 51200,
    7: 102400,
}

#: What MS-ASAIRS allows a Preview to hold.
MAX_PREVIEW = 255

# MIME trees deeper than this are hostile or broken; nothing below is read.
_MAX_DEPTH = 64


# Values


@dataclass(frozen=True)
class BodyPreference:
    """
    One C{AirSyncBase:BodyPreference} of a client.

    @ivar type: the body type wanted: 1 plain, 2 HTML, 3 RTF, 4 MIME.
    @ivar truncationSize: the most bytes of body data to send, or L{None}
        for all of it.
    @ivar allOrNone: when true, a body that does not fit C{truncationSize}
        is not sent in this type at all.
    @ivar preview: characters of plain-text preview wanted (14.0+), or
        L{None}.
    """

    type: int
    truncationSize: Optional[int] = None
    allOrNone: bool = False
    preview: Optional[int] = None


@dataclass(frozen=True)
class MailOptions:
    """
    How a client wants mail items rendered: a collection's or a fetch's
    C{Options}.

    @ivar bodyPreferences: the client's preferences, in the order given.
    @ivar mimeSupport: 0 never MIME, 1 MIME for S/MIME messages only,
        2 MIME whenever asked for.
    @ivar mimeTruncation: the most characters of MIME to send, or L{None}.
    @ivar version: the EAS protocol version of the request, such as
        C{"14.1"}.
    """

    bodyPreferences: Tuple[BodyPreference, ...] = ()
    mimeSupport: int = 0
    mimeTruncation: Optional[int] = None
    version: str = "14.1"


@dataclass(frozen=True)
class Attachment:
    """
    One attachment of a message, as L{attachmentParts} finds it.

    @ivar index: the part's position in L{walkParts} order; the tail of
        its C{FileReference}.
    @ivar filename: the decoded file name, or a made-up C{attachment-N}.
    @ivar contentType: the MIME type, lower case, such as C{"image/png"}.
    @ivar data: the decoded bytes.
    @ivar contentId: the C{Content-ID} without angle brackets, or L{None}.
    @ivar inline: whether the part is shown inline (it has a C{Content-ID}
        and is not a C{Content-Disposition: attachment}).
    """

    index: int
    filename: str
    contentType: str
    data: bytes
    contentId: Optional[str] = None
    inline: bool = False

    @property
    def method(self) -> int:
        """
        The C{AirSyncBase:Method}: 5 for an embedded message, else 1.
        """
        return 5 if self.contentType == "message/rfc822" else 1


@dataclass(frozen=True)
class MessageSummary:
    """
    The envelope-ish facts about a message that search and submission need.

    @ivar subject: the decoded subject, C{""} when there is none.
    @ivar sender: the C{From} address, or C{""}.
    @ivar recipients: every C{To}, C{Cc} and C{Bcc} address, first
        occurrence order, without repeats.
    @ivar messageId: the C{Message-ID} as written (with angle brackets), or
        L{None}.
    @ivar date: the C{Date} header as POSIX seconds, or L{None}.
    """

    subject: str
    sender: str
    recipients: Tuple[str, ...]
    messageId: Optional[str]
    date: Optional[float]


# Options


def _int(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def parseOptions(optionsElement: Optional[Element], *, version: str = "14.1") -> MailOptions:
    """
    Read the mail rendering options out of an C{Options} element.

    Works for C{AirSync:Options} (Sync, GetItemEstimate) as well as the
    C{ItemOperations:Options} and C{Search:Options} of other commands: the
    children read are C{AirSyncBase:BodyPreference}, C{AirSync:MIMESupport}
    and C{AirSync:MIMETruncation} whatever the parent's page. Values that
    are not numbers are ignored rather than rejected, as clients rarely get
    a second chance to send the right thing.

    @param optionsElement: the element, or L{None} when the request had
        none.
    @param version: the request's EAS version.
    """
    if optionsElement is None:
        return MailOptions(version=version)
    preferences = []
    for pref in optionsElement.findall("AirSyncBase:BodyPreference"):
        kind = _int(pref.findtext("AirSyncBase:Type"))
        if kind is None:
            continue
        size = _int(pref.findtext("AirSyncBase:TruncationSize"))
        preview = _int(pref.findtext("AirSyncBase:Preview"))
        preferences.append(
            BodyPreference(
                type=kind,
                truncationSize=size if size is not None and size >= 0 else None,
                allOrNone=_int(pref.findtext("AirSyncBase:AllOrNone")) == 1,
                preview=min(preview, MAX_PREVIEW) if preview is not None and preview > 0 else None,
            )
        )
    mimeSupport = _int(optionsElement.findtext("AirSync:MIMESupport"))
    mimeTruncation = _int(optionsElement.findtext("AirSync:MIMETruncation"))
    return MailOptions(
        bodyPreferences=tuple(preferences),
        mimeSupport=mimeSupport if mimeSupport in (0, 1, 2) else 0,
        mimeTruncation=MIME_TRUNCATION.get(mimeTruncation) if mimeTruncation is not None else None,
        version=version,
    )


def _atLeast(version: str, wanted: Tuple[int, int]) -> bool:
    try:
        major, _, minor = version.partition(".")
        return (int(major), int(minor or 0)) >= wanted
    except ValueError:
        # An unreadable version came from our own caller, not the client;
        # assume the newest behaviour.
        return True


# Text decoding


class _Policy(Compat32):
    """
    compat32 parsing (the most forgiving the package has), but header
    values come back unfolded and as real text: raw 8-bit headers, which
    the parser keeps as surrogate escapes, are read as UTF-8 (what RFC 6532
    senders write) or else Windows-1252 (what everyone else does).
    """

    def header_fetch_parse(self, name: str, value: str) -> str:
        return _unfold(_unescape(value)) if isinstance(value, str) else str(value)


_POLICY = _Policy()


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _unfold(value: str) -> str:
    # Most header values are one line: every message has a dozen of them.
    if "\n" not in value:
        return value.strip()
    return _FOLD.sub("", value).strip()


def _unescape(value: str) -> str:
    """
    Turn the parser's surrogate escapes back into the text they stand for.
    """
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    raw = value.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def _clean(text: str) -> str:
    """
    Make text fit for a WBXML string: no NUL (it ends STR_I) and no lone
    surrogates (they are not UTF-8).
    """
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


# Charsets whose registered codec is a strict subset of what senders really
# mean by the name (the WHATWG encoding standard makes the same choices).
_DECODE_AS: Dict[str, str] = {
    "iso8859-1": "cp1252",
    "ascii": "cp1252",
    "shift_jis": "cp932",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
    "big5": "big5hkscs",
    "tis-620": "cp874",
}

# Names the codec registry does not know but mail does.
_CHARSET_ALIASES: Dict[str, str] = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "x-sjis": "shift_jis",
    "windows-874": "cp874",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "unicode-1-1-utf-7": "utf-7",
    "x-mac-roman": "mac-roman",
    "x-gbk": "gbk",
}

# Python codec names to Windows code pages (MS-ASEMAIL InternetCPID).
_CODE_PAGES: Dict[str, int] = {
    "utf-8": 65001,
    "ascii": 20127,
    "utf-7": 65000,
    "utf-16": 1200,
    "utf-16-le": 1200,
    "utf-16-be": 1201,
    "iso8859-1": 28591,
    "iso8859-2": 28592,
    "iso8859-3": 28593,
    "iso8859-4": 28594,
    "iso8859-5": 28595,
    "iso8859-6": 28596,
    "iso8859-7": 28597,
    "iso8859-8": 28598,
    "iso8859-9": 28599,
    "iso8859-13": 28603,
    "iso8859-15": 28605,
    "cp1250": 1250,
    "cp1251": 1251,
    "cp1252": 1252,
    "cp1253": 1253,
    "cp1254": 1254,
    "cp1255": 1255,
    "cp1256": 1256,
    "cp1257": 1257,
    "cp1258": 1258,
    "cp874": 874,
    "tis-620": 874,
    "koi8-r": 20866,
    "koi8-u": 21866,
    "shift_jis": 932,
    "cp932": 932,
    "euc_jp": 51932,
    "iso2022_jp": 50220,
    "gb2312": 936,
    "gbk": 936,
    "gb18030": 54936,
    "big5": 950,
    "cp950": 950,
    "big5hkscs": 950,
    "euc_kr": 51949,
    "cp949": 949,
    "iso2022_kr": 50225,
    "mac-roman": 10000,
    "cp866": 866,
    "cp850": 850,
    "cp437": 437,
}


def _codecName(charset: Optional[str]) -> Optional[str]:
    """
    The registry's canonical name for a MIME charset name, or L{None} when
    there is no charset or no such codec.
    """
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError, TypeError):
        return None


def _decodeBytes(data: bytes, charset: Optional[str]) -> str:
    """
    Decode C{data} declared as C{charset}, never failing: bytes that do not
    fit become U+FFFD. Undeclared, US-ASCII and unknown charsets are read as
    UTF-8 when they are valid UTF-8 (raw 8-bit UTF-8 is common), else as
    Windows-1252.
    """
    codec = _codecName(charset)
    if codec in (None, "ascii"):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            codec = "cp1252"
    codec = _DECODE_AS.get(codec, codec)
    try:
        return data.decode(codec, "replace")
    except Exception:
        # Not a text codec after all (charset="base64", "idna", ...).
        return data.decode("utf-8", "replace")


def _codePage(charset: Optional[str]) -> int:
    """
    The Windows code page for C{charset}; text without a charset is
    US-ASCII (RFC 2045 5.2), anything unknown is reported as UTF-8, which
    is what the client is sent anyway.
    """
    if charset is None:
        return 20127
    codec = _codecName(charset)
    return _CODE_PAGES.get(codec, 65001) if codec else 65001


# RFC 2047 encoded words; the "*language" suffix is RFC 2231's.
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([qQbB])\?([^?\s]*)\?=")


def _wordBytes(encoding: str, payload: str) -> bytes:
    if encoding in "bB":
        letters = re.sub(r"[^A-Za-z0-9+/]", "", payload)
        if len(letters) % 4 == 1:
            letters = letters[:-1]
        letters += "=" * (-len(letters) % 4)
        try:
            return binascii.a2b_base64(letters)
        except binascii.Error:
            return b""
    raw = payload.replace("_", " ").encode("utf-8", "surrogateescape")
    return re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)


def decodeHeader(value: Optional[str]) -> str:
    """
    Decode RFC 2047 encoded words in a header value to text.

    Adjacent encoded words in one charset are joined before decoding, as
    senders split multi-byte characters across words; the whitespace
    between encoded words is dropped (RFC 2047 6.2). Malformed words are
    left as they are, unknown charsets are decoded with replacement.
    """
    if not value:
        return ""
    out: List[str] = []
    pending = bytearray()
    pendingCharset: Optional[str] = None
    pos = 0

    def flush() -> None:
        nonlocal pendingCharset
        if pendingCharset is not None:
            out.append(_decodeBytes(bytes(pending), pendingCharset))
            pending.clear()
            pendingCharset = None

    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        if between and not (between.isspace() and pendingCharset is not None):
            flush()
            out.append(between)
        charset = match.group(1).lower()
        if pendingCharset is not None and charset != pendingCharset:
            flush()
        pendingCharset = charset
        pending += _wordBytes(match.group(2), match.group(3))
        pos = match.end()
    flush()
    out.append(value[pos:])
    return _clean("".join(out))


# HTML and text


class _TextExtractor(HTMLParser):
    """
    Readable plain text out of HTML: what a text-only client can show.
    """

    _SKIP = frozenset({"script", "style", "head", "title", "template"})
    # Tags that start a paragraph (blank line) or just a new line.
    _PARAGRAPH = frozenset(
        {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "ul", "ol", "pre", "hr", "dl"}
    )
    _LINE = frozenset(
        {
            "div",
            "li",
            "tr",
            "dt",
            "dd",
            "section",
            "article",
            "header",
            "footer",
            "address",
            "center",
            "form",
            "fieldset",
            "nav",
            "aside",
            "figure",
            "caption",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: List[str] = []
        self._pending = 0
        self._skip: List[str] = []
        self._pre = 0

    def _atLineStart(self) -> bool:
        return not self._out or self._out[-1].endswith("\n")

    def _block(self, newlines: int) -> None:
        self._pending = max(self._pending, newlines)

    def _flush(self) -> None:
        if self._pending and self._out:
            self._out.append("\n" * self._pending)
        self._pending = 0

    def handle_starttag(self, tag: str, attrs: Sequence[Tuple[str, Optional[str]]]) -> None:
        if tag == "body":
            # A missing </head> must not swallow the whole message.
            self._skip = [t for t in self._skip if t not in ("head", "title")]
        if tag in self._SKIP:
            self._skip.append(tag)
            return
        if tag == "br":
            self._flush()
            self._out.append("\n")
        elif tag in self._PARAGRAPH:
            self._block(2)
        elif tag in self._LINE:
            self._block(1)
        if tag == "li":
            self._flush()
            self._out.append("- ")
        elif tag in ("td", "th") and not self._atLineStart():
            self._out.append(" ")
        if tag == "pre":
            self._pre += 1

    def handle_startendtag(self, tag: str, attrs: Sequence[Tuple[str, Optional[str]]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in self._SKIP:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            if tag in self._skip:
                del self._skip[len(self._skip) - 1 - self._skip[::-1].index(tag) :]
            return
        if tag in self._PARAGRAPH:
            self._block(2)
        elif tag in self._LINE:
            self._block(1)
        if tag == "pre" and self._pre:
            self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._skip or not data:
            return
        if self._pre:
            text = data.replace("\r\n", "\n").replace("\r", "\n")
        else:
            text = re.sub(r"[ \t\r\n\f\v]+", " ", data)
            if self._pending or self._atLineStart() or self._out[-1].endswith(" "):
                text = text.lstrip(" ")
            if not text:
                return
        self._flush()
        self._out.append(text)

    def text(self) -> str:
        text = "".join(self._out).replace("\xa0", " ")
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def htmlToText(markup: str) -> str:
    """
    Render HTML as readable plain text: scripts, styles and the head
    dropped; paragraphs, headings, lists, divs, table rows and C{<br>} as
    line breaks; entities decoded; other whitespace collapsed (except in
    C{<pre>}).
    """
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
        return parser.text()
    except Exception:
        # HTMLParser has raised on odd marked sections in some Python
        # versions; a crude tag strip is better than no text.
        stripped = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>|<[^>]*>", " ", markup)
        return re.sub(r"[ \t\r\f\v]+", " ", html.unescape(stripped)).strip()


_PLAIN_WRAPPER = '<div style="white-space: pre-wrap; word-wrap: break-word;">{}</div>'


def textToHTML(text: str) -> str:
    """
    Present plain text as an HTML document for a client that asked for
    HTML: escaped, so that text such as C{<script>} is shown and not run,
    and with its line breaks and spacing kept.
    """
    return _htmlDocument(_PLAIN_WRAPPER.format(html.escape(text)))


def _htmlDocument(body: str) -> str:
    return (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
        f"</head><body>{body}</body></html>"
    )


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _truncate(text: str, limit: Optional[int]) -> Tuple[str, bool]:
    """
    Cut C{text} to at most C{limit} bytes of UTF-8 without splitting a
    character; say whether anything was cut.
    """
    if limit is None:
        return text, False
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    return data[: max(limit, 0)].decode("utf-8", "ignore"), True


# The MIME tree


def _parse(raw: bytes) -> Message:
    try:
        return message_from_bytes(bytes(raw), policy=_POLICY)
    except Exception:
        # The parser is very forgiving, but a message that still defeats it
        # is read as headerless text rather than lost.
        fallback = Message(policy=_POLICY)
        fallback.set_payload(bytes(raw).decode("ascii", "surrogateescape"))
        return fallback


def _contentType(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _isContainer(part: Message) -> bool:
    # message/* parts are leaves: an attached message is one attachment,
    # not a source of further attachments or body text.
    return part.is_multipart() and not _contentType(part).startswith("message/")


def _walk(message: Message) -> List[Message]:
    """
    Every part in depth-first order, without descending into attached
    messages; iterative, so that deep nesting cannot exhaust the stack.
    """
    parts: List[Message] = []
    stack: List[Tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        parts.append(part)
        if _isContainer(part) and depth < _MAX_DEPTH:
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend((c, depth + 1) for c in reversed(children) if isinstance(c, Message))
    return parts


def walkParts(raw: bytes) -> List[Message]:
    """
    The parts of a message in the order that numbers them for
    C{FileReference}s: depth first, the message itself first, attached
    messages as single parts.
    """
    try:
        return _walk(_parse(raw))
    except Exception:
        return []


def _disposition(part: Message) -> str:
    try:
        return (part.get_content_disposition() or "").lower()
    except Exception:
        return ""


def _filename(part: Message) -> Optional[str]:
    try:
        name = part.get_filename() or part.get_param("name")
    except Exception:
        return None
    if isinstance(name, tuple):
        # An RFC 2231 value get_param() did not collapse.
        name = _decodeBytes(name[2].encode("utf-8", "surrogateescape"), name[0])
    if not isinstance(name, str):
        return None
    # Keep only the last path component: some senders include a path.
    name = re.split(r"[\\/]", decodeHeader(_unescape(name)))[-1]
    # Control characters (a folded or forged name) have no place in a file
    # name, nor in the headers a forward writes it into.
    name = re.sub(r"[\x00-\x1f\x7f]+", " ", name).strip()
    return name or None


def _contentId(part: Message) -> Optional[str]:
    value = part.get("Content-ID")
    if not value:
        return None
    value = _clean(value.strip().strip("<>").strip())
    return value or None


def _partBytes(part: Message) -> bytes:
    """
    The decoded content of a leaf part; for an attached message, the
    message itself.
    """
    try:
        if part.is_multipart():
            inner = part.get_payload()
            if isinstance(inner, list):
                buf = io.BytesIO()
                for sub in inner:
                    if isinstance(sub, Message):
                        BytesGenerator(buf, mangle_from_=False, policy=_POLICY).flatten(sub)
                return buf.getvalue()
            return b""
        data = part.get_payload(decode=True)
        return data if isinstance(data, bytes) else b""
    except Exception:
        payload = part.get_payload()
        if isinstance(payload, str):
            return payload.encode("utf-8", "surrogateescape")
        return b""


def _partText(part: Message) -> str:
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    text = _decodeBytes(_partBytes(part), charset)
    return _clean(text.replace("\r\n", "\n").replace("\r", "\n"))


def _partCharset(part: Message) -> Optional[str]:
    try:
        return part.get_content_charset()
    except Exception:
        return None


# One piece of body: the plain and/or HTML rendition of the same content.
_Segment = Tuple[Optional[Message], Optional[Message]]


def _segments(part: Message, depth: int = 0) -> List[_Segment]:
    """
    The parts that make up the readable body, following RFC 2046: the best
    alternatives of a multipart/alternative, the root of a
    multipart/related, the signed content of a multipart/signed, and the
    first part plus any later unnamed inline text of a multipart/mixed
    (mailing list footers live there).
    """
    if depth > _MAX_DEPTH or _disposition(part) == "attachment":
        return []
    kind = _contentType(part)
    if not part.is_multipart():
        if kind == "text/html":
            return [(None, part)]
        if kind == "text/plain" or (depth == 0 and kind.partition("/")[0] in ("text", "multipart")):
            # At the top, any text (enriched, calendar...) is better shown
            # as it is than not at all, and so is a multipart without a
            # boundary, which parses as one text blob.
            return [(part, None)]
        return []
    if kind.startswith("message/"):
        return []
    children = [c for c in part.get_payload() if isinstance(c, Message)]
    if not children:
        return []
    subtype = kind.partition("/")[2]
    if subtype == "alternative":
        plain: Optional[List[_Segment]] = None
        rich: Optional[List[_Segment]] = None
        for child in children:
            found = _segments(child, depth + 1)
            if not found:
                continue
            if any(h is not None for _, h in found):
                rich = found  # the last (richest) HTML alternative wins
            elif plain is None:
                plain = found
        if plain and rich and len(plain) == 1 and len(rich) == 1:
            return [(plain[0][0], rich[0][1])]
        return rich or plain or []
    if subtype == "related":
        start = part.get_param("start")
        root = children[0]
        if isinstance(start, str):
            for child in children:
                if child.get("Content-ID", "").strip() == start.strip():
                    root = child
                    break
        return _segments(root, depth + 1)
    if subtype == "signed":
        return _segments(children[0], depth + 1)
    found = _segments(children[0], depth + 1)
    for child in children[1:]:
        if (
            _contentType(child) in ("text/plain", "text/html")
            and _disposition(child) != "attachment"
            and _filename(child) is None
        ):
            found.extend(_segments(child, depth + 1))
    return found


class _Parsed:
    """
    One message, parsed once, with its body renditions worked out lazily.
    """

    def __init__(self, raw: bytes) -> None:
        self.raw = bytes(raw)
        self.message = _parse(self.raw)
        self.parts = _walk(self.message)
        try:
            self.segments = _segments(self.message)
        except Exception:
            self.segments = []
        self.bodyParts = {id(p) for segment in self.segments for p in segment if p is not None}
        self._plain: Optional[str] = None
        self._html: Optional[str] = None

    @property
    def nativeHTML(self) -> bool:
        return any(h is not None for _, h in self.segments)

    @property
    def plain(self) -> str:
        if self._plain is None:
            texts = []
            for plainPart, htmlPart in self.segments:
                if plainPart is not None:
                    texts.append(_partText(plainPart))
                elif htmlPart is not None:
                    texts.append(htmlToText(_partText(htmlPart)))
            # Pieces are joined by a blank line; the last keeps its end.
            texts = [t.rstrip("\n") for t in texts[:-1]] + texts[-1:]
            self._plain = "\n\n".join(texts)
        return self._plain

    @property
    def html(self) -> str:
        if self._html is None:
            pieces = []
            for plainPart, htmlPart in self.segments:
                if htmlPart is not None:
                    pieces.append(_partText(htmlPart))
                elif plainPart is not None:
                    pieces.append(_PLAIN_WRAPPER.format(html.escape(_partText(plainPart))))
            if self.nativeHTML:
                self._html = "\n".join(pieces)
            else:
                self._html = _htmlDocument("\n".join(pieces))
        return self._html

    @property
    def mime(self) -> str:
        # EAS carries MIME as STR_I, which must be UTF-8: 7-bit and UTF-8
        # messages go as they are, other 8-bit bytes become U+FFFD.
        return _clean(self.raw.decode("utf-8", "replace"))

    @property
    def smime(self) -> bool:
        return self.messageClass != "IPM.Note"

    @property
    def messageClass(self) -> str:
        kind = _contentType(self.message)
        if kind in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
            return "IPM.Note.SMIME"
        if kind == "multipart/signed":
            protocol = str(self.message.get_param("protocol") or "").lower()
            if "pkcs7" in protocol:
                return "IPM.Note.SMIME.MultipartSigned"
        return "IPM.Note"

    @property
    def codePage(self) -> int:
        for plainPart, htmlPart in self.segments:
            part = htmlPart if htmlPart is not None else plainPart
            if part is not None:
                return _codePage(_partCharset(part))
        return 65001

    def header(self, name: str) -> str:
        value = self.message.get(name)
        return value if isinstance(value, str) else ""

    def addresses(self, *names: str) -> List[Tuple[str, str]]:
        values: List[str] = []
        for name in names:
            values.extend(v for v in (self.message.get_all(name) or []) if isinstance(v, str))
        try:
            pairs = getaddresses(values)
        except Exception:
            return []
        return [(decodeHeader(n).strip(), _clean(a.strip())) for n, a in pairs if a.strip() or n.strip()]

    def attachments(self) -> List[Attachment]:
        found = []
        for index, part in enumerate(self.parts):
            if _isContainer(part) or id(part) in self.bodyParts:
                continue
            kind = _contentType(part)
            filename = _filename(part)
            contentId = _contentId(part)
            disposition = _disposition(part)
            if not (
                disposition == "attachment"
                or filename is not None
                or contentId is not None
                or kind.partition("/")[0] not in ("text", "multipart")
            ):
                continue
            if filename is None:
                filename = f"attachment-{index}"
                if kind == "message/rfc822":
                    filename += ".eml"
            found.append(
                Attachment(
                    index=index,
                    filename=_clean(filename),
                    contentType=_clean(kind),
                    data=_partBytes(part),
                    contentId=contentId,
                    inline=contentId is not None and disposition != "attachment",
                )
            )
        return found


# Message properties


def _formatAddresses(pairs: Iterable[Tuple[str, str]]) -> str:
    out = []
    for name, address in pairs:
        if name and address:
            escaped = name.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'"{escaped}" <{address}>')
        else:
            out.append(address or name)
    return ", ".join(out)


_REPLY_PREFIX = re.compile(r"^(?:\s*(?:re|fwd?|aw|wg|sv|vs|antw|rif|tr|r|i)\s*(?:\[\d+\])?\s*:)+\s*", re.I)


def _threadTopic(subject: str) -> str:
    return _REPLY_PREFIX.sub("", subject).strip()


def _importance(parsed: _Parsed) -> int:
    value = parsed.header("Importance").strip().lower()
    if value in ("high", "urgent"):
        return 2
    if value in ("low", "non-urgent"):
        return 0
    if value == "normal":
        return 1
    priority = re.match(r"\s*(\d)", parsed.header("X-Priority"))
    if priority:
        level = int(priority.group(1))
        return 2 if level in (1, 2) else 0 if level in (4, 5) else 1
    value = (parsed.header("X-MSMail-Priority") or parsed.header("Priority")).strip().lower()
    if value in ("high", "urgent"):
        return 2
    if value in ("low", "non-urgent"):
        return 0
    return 1


def _dateTime(seconds: float) -> str:
    try:
        when = datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        when = datetime.fromtimestamp(0, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _headerDate(parsed: _Parsed) -> Optional[float]:
    value = parsed.header("Date")
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    except Exception:
        return None


_MESSAGE_ID = re.compile(r"<[^<>\s]+>")


def _conversationId(parsed: _Parsed) -> bytes:
    """
    16 bytes naming the thread: the hash of its root message's ID (first in
    C{References}, else C{In-Reply-To}, else this message's own ID), or of
    the normalised subject when there are no IDs at all.
    """
    for header in ("References", "In-Reply-To", "Message-ID"):
        found = _MESSAGE_ID.search(parsed.header(header))
        if found:
            root = found.group(0)
            break
    else:
        root = _threadTopic(decodeHeader(parsed.header("Subject"))).lower()
    return hashlib.md5(root.encode("utf-8", "replace")).digest()


# Seconds between 1601-01-01 (FILETIME epoch) and 1970-01-01.
_FILETIME_OFFSET = 11644473600


def _conversationIndex(seconds: float) -> bytes:
    """
    The 5-byte conversation index header (MS-ASCON 2.2.2.4): the send
    time's FILETIME without its top (reserved, constant) byte and its two
    lowest bytes, as in the header block of PidTagConversationIndex.
    """
    try:
        filetime = int((seconds + _FILETIME_OFFSET) * 10_000_000)
    except (OverflowError, ValueError):
        filetime = 0
    if not 0 <= filetime < 2**64:
        filetime = 0
    return filetime.to_bytes(8, "big")[1:6]


# Building ApplicationData


def _body(parsed: _Parsed, options: MailOptions) -> Element:
    """
    The C{AirSyncBase:Body} for C{options}: the client's preferences in its
    order, skipping types not offered (RTF, MIME without C{MIMESupport})
    and types that would need truncating under C{AllOrNone}; plain text
    when nothing fits.
    """
    allowMIME = options.mimeSupport == 2 or (options.mimeSupport == 1 and parsed.smime)
    preferences = list(options.bodyPreferences)
    if parsed.smime and options.mimeSupport >= 1:
        # The client asked for S/MIME as MIME: the signature or the
        # ciphertext cannot be checked in any other form.
        mimePrefs = [p for p in preferences if p.type == MIME] or [BodyPreference(MIME)]
        preferences = mimePrefs[:1] + [p for p in preferences if p.type != MIME]

    def render(kind: int) -> str:
        if kind == HTML:
            return parsed.html
        if kind == MIME:
            return parsed.mime
        return parsed.plain

    chosen: Optional[Tuple[int, str, Optional[int]]] = None
    for pref in preferences:
        if pref.type not in (PLAIN, HTML, MIME) or (pref.type == MIME and not allowMIME):
            continue
        text = render(pref.type)
        limit = pref.truncationSize
        if pref.type == MIME and options.mimeTruncation is not None:
            # MIMETruncation counts characters, TruncationSize bytes; MIME
            # is (nearly always) ASCII, where the two agree.
            limit = options.mimeTruncation if limit is None else min(limit, options.mimeTruncation)
        if pref.allOrNone and limit is not None and len(text.encode("utf-8")) > limit:
            continue
        chosen = (pref.type, text, limit)
        break
    if chosen is None:
        # Nothing acceptable: plain text, but never more than the client
        # said it could take in any form.
        sizes = [p.truncationSize for p in options.bodyPreferences if p.truncationSize is not None]
        chosen = (PLAIN, parsed.plain, min(sizes) if sizes else None)

    kind, full, limit = chosen
    data, truncated = _truncate(full, limit)
    body = E(
        "AirSyncBase:Body",
        E("Type", str(kind)),
        E("EstimatedDataSize", str(len(full.encode("utf-8")))),
    )
    if truncated:
        body.add("Truncated", "1")
    body.add("Data", data)
    previews = [p.preview for p in options.bodyPreferences if p.preview]
    if previews and _atLeast(options.version, (14, 0)):
        body.add("Preview", _collapse(parsed.plain)[: min(previews[0], MAX_PREVIEW)])
    return body


def _attachmentsElement(attachments: Sequence[Attachment], fileReferencePrefix: str) -> Element:
    container = E("AirSyncBase:Attachments")
    for item in attachments:
        element = container.add(
            "Attachment",
            E("DisplayName", item.filename),
            E("FileReference", _clean(f"{fileReferencePrefix}:{item.index}")),
            E("Method", str(item.method)),
            E("EstimatedDataSize", str(len(item.data))),
        )
        if item.contentId is not None:
            element.add("ContentId", item.contentId)
        if item.inline:
            element.add("IsInline", "1")
    return container


def _applicationData(
    parsed: _Parsed,
    read: bool,
    flagged: bool,
    answered: bool,
    received: float,
    options: MailOptions,
    fileReferencePrefix: str,
    includeBody: bool,
) -> Element:
    email2 = _atLeast(options.version, (14, 0))
    subject = decodeHeader(parsed.header("Subject"))
    to = parsed.addresses("To")
    cc = parsed.addresses("Cc")
    data = E("AirSync:ApplicationData", E("Email:To", _formatAddresses(to)))
    if cc:
        data.add("Email:Cc", _formatAddresses(cc))
    data.add("Email:From", _formatAddresses(parsed.addresses("From")))
    replyTo = parsed.addresses("Reply-To")
    if replyTo:
        data.add("Email:ReplyTo", _formatAddresses(replyTo))
    data.add("Email:Subject", subject)
    data.add("Email:DateReceived", _dateTime(received))
    data.add("Email:DisplayTo", "; ".join(name or address for name, address in to))
    data.add("Email:ThreadTopic", _threadTopic(subject))
    data.add("Email:Importance", str(_importance(parsed)))
    data.add("Email:Read", "1" if read else "0")
    attachments = parsed.attachments()
    if attachments:
        data.append(_attachmentsElement(attachments, fileReferencePrefix))
    if includeBody:
        data.append(_body(parsed, options))
    data.add("Email:MessageClass", parsed.messageClass)
    data.add("Email:InternetCPID", str(parsed.codePage))
    data.append(flagElement(flagged))
    data.add("Email:ContentClass", "urn:content-classes:message")
    data.add("AirSyncBase:NativeBodyType", str(HTML if parsed.nativeHTML else PLAIN))
    if email2:
        sent = _headerDate(parsed)
        data.add("Email2:ConversationId", _conversationId(parsed))
        data.add("Email2:ConversationIndex", _conversationIndex(received if sent is None else sent))
        data.add("Email2:LastVerbExecuted", "1" if answered else "0")
    return data


def _salvage(raw: bytes, received: float, read: bool) -> Element:
    """
    The least a client needs to list a message that defeated the parser:
    its bytes as plain text.
    """
    text = _clean(bytes(raw).decode("utf-8", "replace"))
    return E(
        "AirSync:ApplicationData",
        E("Email:To", ""),
        E("Email:From", ""),
        E("Email:Subject", ""),
        E("Email:DateReceived", _dateTime(received)),
        E("Email:Importance", "1"),
        E("Email:Read", "1" if read else "0"),
        E(
            "AirSyncBase:Body",
            E("Type", "1"),
            E("EstimatedDataSize", str(len(text.encode("utf-8")))),
            E("Data", text),
        ),
        E("Email:MessageClass", "IPM.Note"),
        E("Email:Flag"),
        E("Email:ContentClass", "urn:content-classes:message"),
    )


def applicationData(
    raw: bytes,
    *,
    read: bool,
    flagged: bool,
    answered: bool,
    received: float,
    options: MailOptions,
    fileReferencePrefix: str,
    includeBody: bool = True,
) -> Element:
    """
    The C{AirSync:ApplicationData} of a Sync C{Add} (or a Fetch) for one
    message, laid out as Exchange does (digest 6.2): To, Cc, From, Subject,
    DateReceived, DisplayTo, ThreadTopic, Importance, Read, Attachments,
    Body, MessageClass, InternetCPID, Flag, ContentClass, NativeBodyType,
    then the Email2 conversation elements (14.0 and later only).

    Never raises: a message the parser cannot make sense of still yields
    an item whose body is whatever text its bytes hold.

    @param raw: the RFC 5322 message.
    @param read: the message has been seen.
    @param flagged: the message is flagged for follow-up.
    @param answered: the message has been replied to.
    @param received: when the message arrived, POSIX seconds.
    @param options: the client's rendering options.
    @param fileReferencePrefix: the text before C{":index"} in each
        attachment's C{FileReference}; it must let L{attachment} be called
        with the right message later.
    @param includeBody: whether to include C{AirSyncBase:Body}.
    """
    try:
        return _applicationData(
            _Parsed(raw), read, flagged, answered, received, options, fileReferencePrefix, includeBody
        )
    except Exception:
        return _salvage(raw, received, read)


# Attachments for ItemOperations and SmartForward


def attachmentParts(raw: bytes) -> List[Attachment]:
    """
    The attachments of a message (including inline images), in
    L{walkParts} order.
    """
    try:
        return _Parsed(raw).attachments()
    except Exception:
        return []


def attachment(raw: bytes, index: int) -> Optional[Attachment]:
    """
    The attachment whose C{FileReference} ends in C{index}, or L{None} when
    there is no such attachment (a stale or forged reference).
    """
    for item in attachmentParts(raw):
        if item.index == index:
            return item
    return None


# Search and submission


def summary(raw: bytes) -> MessageSummary:
    """
    Subject, sender, recipients, Message-ID and date of a message.
    """
    try:
        parsed = _Parsed(raw)
        recipients: List[str] = []
        for _, address in parsed.addresses("To", "Cc", "Bcc"):
            if address and address not in recipients:
                recipients.append(address)
        senders = [a for _, a in parsed.addresses("From") if a]
        return MessageSummary(
            subject=decodeHeader(parsed.header("Subject")),
            sender=senders[0] if senders else "",
            recipients=tuple(recipients),
            messageId=_clean(parsed.header("Message-ID")) or None,
            date=_headerDate(parsed),
        )
    except Exception:
        return MessageSummary("", "", (), None, None)


def plainText(raw: bytes) -> str:
    """
    The message's body as plain text (HTML-only messages converted), for
    free-text search.
    """
    try:
        return _Parsed(raw).plain
    except Exception:
        return _clean(bytes(raw).decode("utf-8", "replace"))


def stripBcc(raw: bytes) -> bytes:
    """
    Remove the C{Bcc} header fields (and their continuation lines) from a
    message about to be submitted; every other byte is kept as it was, so
    signatures over the rest stay valid.
    """
    lines = bytes(raw).splitlines(keepends=True)
    out = []
    dropping = False
    for number, line in enumerate(lines):
        if line in (b"\r\n", b"\n", b"\r"):
            # The end of the header section: the rest goes as it is.
            out.extend(lines[number:])
            break
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() == b"bcc"
        if not dropping:
            out.append(line)
    return b"".join(out)


def _quoteHeader(parsed: _Parsed, forward: bool) -> str:
    sender = _formatAddresses(parsed.addresses("From")) or "(unknown sender)"
    date = parsed.header("Date")
    if not forward:
        return f"On {date}, {sender} wrote:" if date else f"{sender} wrote:"
    lines = ["---------- Forwarded message ----------", f"From: {sender}"]
    if date:
        lines.append(f"Date: {date}")
    lines.append(f"Subject: {decodeHeader(parsed.header('Subject'))}")
    to = _formatAddresses(parsed.addresses("To"))
    if to:
        lines.append(f"To: {to}")
    cc = _formatAddresses(parsed.addresses("Cc"))
    if cc:
        lines.append(f"Cc: {cc}")
    return "\n".join(lines)


def _quotedPlain(parsed: _Parsed, forward: bool) -> str:
    text = parsed.plain.rstrip("\n")
    if not forward:
        text = "\n".join(("> " + line) if line else ">" for line in text.split("\n"))
    return f"\n\n{_quoteHeader(parsed, forward)}\n\n{text}\n"


def _quotedHTML(parsed: _Parsed, forward: bool) -> str:
    original = parsed.html
    inner = re.search(r"(?is)<body[^>]*>(.*)</body\s*>", original)
    if inner:
        original = inner.group(1)
    original = re.sub(r"(?is)<head\b.*?</head\s*>", "", original)
    header = "<br>".join(html.escape(line) for line in _quoteHeader(parsed, forward).split("\n"))
    if forward:
        return f"<br><br><div>{header}</div><br><div>{original}</div>"
    return (
        f'<br><br><div>{header}</div><blockquote type="cite" style="margin:0 0 0 .8ex;'
        f'border-left:1px solid #ccc;padding-left:1ex">{original}</blockquote>'
    )


def _setText(part: EmailMessage, text: str, subtype: str) -> None:
    # set_content() replaces only the Content-* fields, so the client's
    # From/To/Subject survive when the part is the message itself.
    part.set_content(text, subtype=subtype, charset="utf-8")


def quoteForReply(original: bytes, reply: bytes, forward: bool) -> bytes:
    """
    Build the message a SmartReply or SmartForward sends: the client's new
    message with the original quoted below its text (and, for a forward,
    the original's attachments added).

    The client's headers are kept. If the rewrite fails for any reason the
    client's message is returned as it came, because sending it without
    the quote beats not sending it.

    @param original: the message being replied to or forwarded.
    @param reply: the client's new message (the C{Mime} it sent).
    @param forward: C{True} for SmartForward.
    """
    try:
        source = _Parsed(original)
        message = message_from_bytes(bytes(reply), policy=emailPolicy.SMTP)
        assert isinstance(message, EmailMessage)
        plainPart = message.get_body(("plain",))
        htmlPart = message.get_body(("html",))
        if plainPart is None and htmlPart is None:
            # Only attachments (or nothing): the quote becomes the text,
            # put first in a multipart/mixed.
            if message.get_content_type() != "multipart/mixed":
                message.make_mixed()
            textPart = EmailMessage(policy=emailPolicy.SMTP)
            _setText(textPart, _quotedPlain(source, forward).lstrip("\n"), "plain")
            message.get_payload().insert(0, textPart)  # type: ignore[union-attr]
        if isinstance(plainPart, EmailMessage):
            _setText(plainPart, _partText(plainPart).rstrip("\n") + _quotedPlain(source, forward), "plain")
        if isinstance(htmlPart, EmailMessage):
            markup = _partText(htmlPart)
            quote = _quotedHTML(source, forward)
            end = list(re.finditer(r"(?i)</body\s*>", markup))
            if end:
                markup = markup[: end[-1].start()] + quote + markup[end[-1].start() :]
            else:
                markup += quote
            _setText(htmlPart, markup, "html")
        if forward:
            attachments = source.attachments()
            if attachments and message.get_content_type() != "multipart/mixed":
                message.make_mixed()
            for item in attachments:
                try:
                    _addAttachment(message, item)
                except Exception:
                    # One unrepresentable attachment must not cost the
                    # others, or the quote.
                    pass
        return message.as_bytes(policy=emailPolicy.SMTP)
    except Exception:
        return bytes(reply)


def _addAttachment(message: EmailMessage, item: Attachment) -> None:
    maintype, _, subtype = item.contentType.partition("/")
    if not re.fullmatch(r"[\w.+-]+/[\w.+-]+", item.contentType):
        maintype, subtype = "application", "octet-stream"
    if item.contentType == "message/rfc822":
        # RFC 2046 5.2.1 forbids base64 for message/rfc822, so the message
        # goes in as a message, not as bytes.
        inner = message_from_bytes(item.data, policy=emailPolicy.SMTP)
        message.add_attachment(inner, filename=item.filename)
    else:
        message.add_attachment(
            item.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=item.filename,
            cid=f"<{item.contentId}>" if item.contentId and item.contentId.isprintable() else None,
            disposition="inline" if item.inline else "attachment",
        )


# Flags and drafts


def flagElement(flagged: bool) -> Element:
    """
    The C{Email:Flag} for a message: empty when not flagged (which clients
    read as "cleared"), else an active follow-up flag.
    """
    if flagged:
        return E("Email:Flag", E("Status", "2"), E("FlagType", "Flag for follow up"))
    return E("Email:Flag")


def draftMessage(applicationData: Element) -> bytes:
    """
    An RFC 5322 message from the C{ApplicationData} of a draft a 16.x
    client adds: To, Cc, C{Email2:Bcc}, Subject, Importance and the body
    (HTML for body type 2, else plain text). There is no Date: the caller
    knows the time. Never raises; unusable fields are left out.
    """
    message = EmailMessage(policy=emailPolicy.SMTP)
    for header, path in (
        ("To", "Email:To"),
        ("Cc", "Email:Cc"),
        ("Bcc", "Email2:Bcc"),
        ("Subject", "Email:Subject"),
    ):
        value = applicationData.findtext(path)
        if value:
            try:
                message[header] = re.sub(r"[\r\n]+", " ", value)
            except Exception:
                pass
    importance = {"0": "low", "2": "high"}.get(applicationData.findtext("Email:Importance") or "")
    if importance:
        message["Importance"] = importance
    bodyElement = applicationData.find("AirSyncBase:Body")
    text = (bodyElement.findtext("Data") if bodyElement is not None else None) or ""
    kind = bodyElement.findtext("Type") if bodyElement is not None else None
    message.set_content(_clean(text), subtype="html" if kind == "2" else "plain", charset="utf-8")
    return message.as_bytes()


# Client changes


def parseFlagChange(applicationData: Element) -> Dict[str, bool]:
    """
    The read and flag states a client's Sync C{Change} sets.

    @return: C{"read"} when the change has C{Email:Read}, C{"flagged"}
        when it has C{Email:Flag}: an empty flag, status 0 (cleared) and
        status 1 (complete) unflag; status 2 (active) flags, as does a flag
        that carries follow-up details without a status.
    """
    result: Dict[str, bool] = {}
    read = applicationData.findtext("Email:Read")
    if read is not None:
        result["read"] = read.strip() == "1"
    flag = applicationData.find("Email:Flag")
    if flag is not None:
        status = flag.findtext("Email:Status")
        if status is None:
            result["flagged"] = bool(flag.children)
        else:
            result["flagged"] = status.strip() == "2"
    return result
