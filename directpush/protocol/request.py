# -*- test-case-name: tests.test_request -*-
"""
An EAS request line and headers, in either query form (MS-ASHTTP 2.2.1.1),
parsed into one L{EASRequest}.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from typing import Callable, Dict, Mapping, Optional, Tuple
from urllib.parse import parse_qsl

import attrs

#: Versions this server speaks, oldest first (what OPTIONS advertises).
VERSIONS: Tuple[str, ...] = ("12.1", "14.0", "14.1", "16.0", "16.1")

#: Command codes of the base64 query form (MS-ASHTTP 2.2.1.1.1.1.2).
COMMAND_CODES: Dict[int, str] = {
    0: "Sync",
    1: "SendMail",
    2: "SmartForward",
    3: "SmartReply",
    4: "GetAttachment",
    9: "FolderSync",
    10: "FolderCreate",
    11: "FolderDelete",
    12: "FolderUpdate",
    13: "MoveItems",
    14: "GetItemEstimate",
    15: "MeetingResponse",
    16: "Search",
    17: "Settings",
    18: "Ping",
    19: "ItemOperations",
    20: "Provision",
    21: "ResolveRecipients",
    22: "ValidateCert",
}

#: Every command name MS-ASCMD defines up to 16.1, in the order servers list
#: them in MS-ASProtocolCommands.
COMMANDS: Tuple[str, ...] = tuple(COMMAND_CODES[c] for c in sorted(COMMAND_CODES)) + ("Find",)

# Base64-form parameter tags (MS-ASHTTP 2.2.1.1.1.1.3).
_PARAMETER_TAGS: Dict[int, str] = {
    0: "AttachmentName",
    1: "CollectionId",
    3: "ItemId",
    4: "LongId",
    6: "Occurrence",
    7: "Options",
    8: "User",
}
_PLAIN_PARAMETERS = frozenset(
    {"AttachmentName", "CollectionId", "ItemId", "LongId", "Occurrence", "SaveInSent", "User"}
)

# MS-ASHTTP asks for DeviceIds without special characters; real ones are
# letters and digits, some with hyphens (GUIDs). 64 is twice the common limit.
_DEVICE_ID = re.compile(r"[A-Za-z0-9-]{1,64}\Z")
_DEVICE_TYPE = re.compile(r"[A-Za-z0-9-]{1,64}\Z")
_MAX_PARAMETER = 1024


class BadRequest(ValueError):
    """
    The request cannot be understood; answer HTTP 400 (the message is safe
    to log and to show the client).
    """


@attrs.frozen
class EASRequest:
    """
    One EAS request, whichever query form it came in.

    @ivar command: the command name, e.g. C{"Sync"}; may be one this server
        does not implement.
    @ivar user: the authenticated user; the only identity that selects a
        mailbox.
    @ivar queryUser: the C{User} the client put in the query, for logs only.
    @ivar deviceId: the device's id (letters, digits, hyphens).
    @ivar deviceType: the device's type, e.g. C{"iPhone"}.
    @ivar version: the protocol version, one of L{VERSIONS}.
    @ivar policyKey: the policy key the client sent, or L{None}.
    @ivar locale: the MS-LCID of the base64 form, or L{None}.
    @ivar parameters: command parameters (C{CollectionId}, C{ItemId},
        C{LongId}, C{Occurrence}, C{AttachmentName}, C{SaveInSent}).
    @ivar acceptMultiPart: the client accepts multipart ItemOperations.
    """

    command: str
    user: str
    deviceId: str
    deviceType: str
    version: str
    policyKey: Optional[int] = None
    queryUser: Optional[str] = None
    locale: Optional[int] = None
    parameters: Mapping[str, str] = attrs.field(factory=dict)
    acceptMultiPart: bool = False

    @property
    def versionNumber(self) -> float:
        return float(self.version)


def _policyKey(raw: Optional[str]) -> Optional[int]:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 10 or int(raw) > 0xFFFFFFFF:
        raise BadRequest("X-MS-PolicyKey is not an unsigned 32-bit number")
    return int(raw)


def _deviceId(raw: str) -> str:
    if not _DEVICE_ID.match(raw):
        raise BadRequest("DeviceId must be 1-64 letters, digits or hyphens")
    return raw


def _deviceType(raw: str) -> str:
    if not _DEVICE_TYPE.match(raw):
        raise BadRequest("DeviceType must be 1-64 letters, digits or hyphens")
    return raw


def _version(raw: Optional[str]) -> str:
    if raw is None:
        raise BadRequest("MS-ASProtocolVersion is missing")
    if raw not in VERSIONS:
        raise BadRequest(f"protocol version {raw[:16]!r} is not supported")
    return raw


def parseRequest(
    query: bytes,
    header: Callable[[str], Optional[str]],
    user: str,
) -> EASRequest:
    """
    Parse the query string of a POST to C{/Microsoft-Server-ActiveSync}.

    @param query: the raw query, without the C{?}.
    @param header: looks up a request header by name (C{None} if absent).
    @param user: the authenticated user name.
    @raise BadRequest: for anything malformed.
    """
    # A base64 blob never holds '&' and only ends in '=' padding.
    if b"&" in query or query.startswith(b"Cmd="):
        return _parsePlain(query, header, user)
    return _parseBase64(query, user, header)


def _parsePlain(
    query: bytes, header: Callable[[str], Optional[str]], user: str
) -> EASRequest:
    try:
        pairs = parse_qsl(
            query.decode("ascii"), keep_blank_values=True, strict_parsing=True,
            encoding="utf-8", errors="strict", max_num_fields=20,
        )
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("malformed query string") from None
    fields: Dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise BadRequest(f"query parameter {key[:32]!r} given twice")
        if len(value) > _MAX_PARAMETER:
            raise BadRequest(f"query parameter {key[:32]!r} is too long")
        fields[key] = value
    for required in ("Cmd", "DeviceId", "DeviceType"):
        if required not in fields:
            raise BadRequest(f"query parameter {required} is missing")
    command = fields["Cmd"]
    if command not in COMMANDS:
        raise BadRequest(f"unknown command {command[:32]!r}")
    parameters = {k: v for k, v in fields.items() if k in _PLAIN_PARAMETERS and k != "User"}
    return EASRequest(
        command=command,
        user=user,
        deviceId=_deviceId(fields["DeviceId"]),
        deviceType=_deviceType(fields["DeviceType"]),
        version=_version(header("MS-ASProtocolVersion")),
        policyKey=_policyKey(header("X-MS-PolicyKey")),
        queryUser=fields.get("User"),
        parameters=parameters,
        acceptMultiPart=header("MS-ASAcceptMultiPart") == "T",
    )


def _parseBase64(
    query: bytes, user: str, header: Callable[[str], Optional[str]]
) -> EASRequest:
    # Clients percent-encode '+', '/' and '=' in the blob, or not.
    raw = query.replace(b"%2B", b"+").replace(b"%2b", b"+").replace(b"%2F", b"/")
    raw = raw.replace(b"%2f", b"/").replace(b"%3D", b"=").replace(b"%3d", b"=")
    if not raw:
        raise BadRequest("empty query")
    try:
        blob = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("query is neither plain nor valid base64") from None
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n > len(blob) - pos:
            raise BadRequest(f"base64 query truncated in {what}")
        chunk = blob[pos : pos + n]
        pos += n
        return chunk

    versionByte, code = take(2, "header")
    (locale,) = struct.unpack("<H", take(2, "locale"))
    version = f"{versionByte // 10}.{versionByte % 10}"
    if version not in VERSIONS:
        raise BadRequest(f"protocol version {version} is not supported")
    command = COMMAND_CODES.get(code)
    if command is None:
        raise BadRequest(f"unknown command code {code}")
    idLength = take(1, "DeviceId length")[0]
    if idLength == 0:
        raise BadRequest("DeviceId is empty")
    deviceId = _binaryDeviceId(take(idLength, "DeviceId"))
    keyLength = take(1, "PolicyKey length")[0]
    if keyLength not in (0, 4):
        raise BadRequest("PolicyKey length must be 0 or 4")
    policyKey = struct.unpack("<I", take(4, "PolicyKey"))[0] if keyLength else None
    typeLength = take(1, "DeviceType length")[0]
    try:
        deviceType = _deviceType(take(typeLength, "DeviceType").decode("ascii"))
    except UnicodeDecodeError:
        raise BadRequest("DeviceType must be 1-64 letters, digits or hyphens") from None
    parameters: Dict[str, str] = {}
    queryUser = None
    acceptMultiPart = header("MS-ASAcceptMultiPart") == "T"
    while pos < len(blob):
        tag, length = take(2, "parameter")
        value = take(length, "parameter value")
        name = _PARAMETER_TAGS.get(tag)
        if name is None:
            raise BadRequest(f"unknown query parameter tag {tag}")
        if name == "Options":
            if length != 1:
                raise BadRequest("Options parameter must be one byte")
            if value[0] & 0x01:
                parameters["SaveInSent"] = "T"
            acceptMultiPart = acceptMultiPart or bool(value[0] & 0x02)
            continue
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"query parameter {name} is not UTF-8") from None
        if name == "User":
            queryUser = text
        else:
            parameters[name] = text
    return EASRequest(
        command=command,
        user=user,
        deviceId=deviceId,
        deviceType=deviceType,
        version=version,
        policyKey=policyKey,
        queryUser=queryUser,
        locale=locale,
        parameters=parameters,
        acceptMultiPart=acceptMultiPart,
    )


def _binaryDeviceId(raw: bytes) -> str:
    """
    The base64 form may carry the DeviceId as text or as a raw 16-byte GUID;
    a GUID becomes its hex spelling so that both forms name one device.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if text and _DEVICE_ID.match(text):
        return text
    if len(raw) == 16:
        return raw.hex().upper()
    raise BadRequest("DeviceId must be 1-64 letters, digits or hyphens")
