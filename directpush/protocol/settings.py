# -*- test-case-name: tests.test_commands -*-
"""
Settings (MS-ASCMD 2.2.1.18): user information, device information,
out-of-office.
"""

from __future__ import annotations

from typing import Optional

from .. import wbxml
from ..wbxml import E
from .core import Services, dumps, loads
from .dispatch import Response, wbxmlResponse
from .request import EASRequest

_OOF_FIELDS = ("OofState", "StartTime", "EndTime")


async def settings(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    if document is None or document.qname != "Settings:Settings":
        return wbxmlResponse(E("Settings:Settings", E("Status", "2")))
    answer = E("Settings:Settings", E("Status", "1"))
    for section in document.children:
        if section.name == "UserInformation":
            answer.append(_userInformation(services, request, section))
        elif section.name == "DeviceInformation":
            info = section.find("Set")
            if info is not None:
                record = await services.device(request)
                record["info"] = {c.name: c.text or "" for c in info.children if c.value is not None}
                await services.saveDevice(request, record)
            answer.append(E("Settings:DeviceInformation", E("Status", "1")))
        elif section.name == "Oof":
            answer.append(await _oof(services, request, section))
        elif section.name == "DevicePassword":
            answer.append(E("Settings:DevicePassword", E("Status", "1")))
        elif section.name == "RightsManagementInformation":
            answer.append(E("Settings:RightsManagementInformation", E("Status", "1"), E("Get")))
        else:
            answer.append(E("Settings:" + section.name, E("Status", "2")))
    return wbxmlResponse(answer)


def _userInformation(services: Services, request: EASRequest, section: wbxml.Element) -> wbxml.Element:
    address = services.address(request.user)
    reply = E("Settings:UserInformation", E("Status", "1"))
    if section.find("Get") is None:
        return reply
    if request.versionNumber >= 14.1:
        reply.add(
            "Get",
            E(
                "Accounts",
                E(
                    "Account",
                    E("UserDisplayName", address.split("@")[0]),
                    E("EmailAddresses", E("SMTPAddress", address), E("PrimarySmtpAddress", address)),
                ),
            ),
        )
    else:
        reply.add("Get", E("EmailAddresses", E("SMTPAddress", address)))
    return reply


async def _oof(services: Services, request: EASRequest, section: wbxml.Element) -> wbxml.Element:
    stored = loads(await services.store.load(request.user, "", "oof")) or {"OofState": "0", "messages": []}
    setting = section.find("Set")
    if setting is not None:
        state = {"OofState": setting.findtext("OofState", "0"), "messages": []}
        for name in ("StartTime", "EndTime"):
            if setting.findtext(name) is not None:
                state[name] = setting.findtext(name)
        for message in setting.findall("OofMessage"):
            state["messages"].append(
                {c.name: (c.text or "") for c in message.children}
            )
        if state["OofState"] not in ("0", "1", "2"):
            return E("Settings:Oof", E("Status", "5"))
        await services.store.save(request.user, "", {"oof": dumps(state)})
        return E("Settings:Oof", E("Status", "1"))
    reply = E("Settings:Oof", E("Status", "1"))
    get = reply.add("Get")
    for name in _OOF_FIELDS:
        if name in stored:
            get.add(name, stored[name])
    for message in stored.get("messages", []):
        out = get.add("OofMessage")
        for name in ("AppliesToInternal", "AppliesToExternalKnown", "AppliesToExternalUnknown"):
            if name in message:
                out.add(name)
        for name in ("Enabled", "ReplyMessage", "BodyType"):
            if name in message:
                out.add(name, message[name])
    return reply
