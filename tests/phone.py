"""
A scripted EAS device for tests: it speaks the protocol the way phones do
(provisioning, FolderSync, paged Sync with a local mirror, ItemOperations,
SendMail ...) over a pluggable transport: straight into a L{Dispatcher}
for unit tests, or HTTPS for end-to-end tests.
"""

from __future__ import annotations

import base64
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import attrs

from directpush import wbxml
from directpush.protocol.dispatch import WBXML_TYPE, Dispatcher
from directpush.wbxml import E

#: (query, headers, body) -> (HTTP status, content type, body)
Transport = Callable[[bytes, Dict[str, str], bytes], Awaitable[Tuple[int, Optional[str], bytes]]]


def dispatcherTransport(dispatcher: Dispatcher, user: str) -> Transport:
    """
    Deliver requests straight to C{dispatcher} as C{user}.
    """

    async def send(query: bytes, headers: Dict[str, str], body: bytes) -> Tuple[int, Optional[str], bytes]:
        lowered = {k.lower(): v for k, v in headers.items()}
        response = await dispatcher.dispatch(query, lambda name: lowered.get(name.lower()), user, body)
        return response.code, response.contentType, response.body

    return send


class ProtocolError(AssertionError):
    """
    The server answered something a phone would not accept.
    """


@attrs.define
class Collection:
    """
    The phone's mirror of one collection.
    """

    key: str = "0"
    items: Dict[str, wbxml.Element] = attrs.field(factory=dict)


@attrs.define
class Phone:
    transport: Transport
    deviceId: str = "phone1"
    version: str = "14.1"
    deviceType: str = "iPhone"
    policyKey: Optional[int] = None
    hierarchyKey: str = "0"
    folders: Dict[str, Tuple[str, str, int]] = attrs.field(factory=dict)
    collections: Dict[str, Collection] = attrs.field(factory=dict)
    bodyPreference: Tuple[Tuple[str, str], ...] = (("Type", "2"), ("TruncationSize", "200000"))

    async def send(
        self, command: str, document: Optional[wbxml.Element] = None, body: bytes = b"", params: str = ""
    ) -> Tuple[int, Optional[str], bytes]:
        query = f"Cmd={command}&User=someone&DeviceId={self.deviceId}&DeviceType={self.deviceType}{params}"
        headers = {"MS-ASProtocolVersion": self.version}
        if self.policyKey is not None:
            headers["X-MS-PolicyKey"] = str(self.policyKey)
        if document is not None:
            body = wbxml.encode(document)
            headers["Content-Type"] = WBXML_TYPE
        elif body:
            headers["Content-Type"] = "message/rfc822"
        return await self.transport(query.encode(), headers, body)

    async def call(self, command: str, document: Optional[wbxml.Element] = None, **kw: Any) -> Optional[wbxml.Element]:
        """
        Send and decode; None for an empty 200.
        """
        code, contentType, body = await self.send(command, document, **kw)
        if code != 200:
            raise ProtocolError(f"{command}: HTTP {code}: {body[:200]!r}")
        if not body:
            return None
        if contentType != WBXML_TYPE:
            raise ProtocolError(f"{command}: content type {contentType}")
        return wbxml.decode(body)

    async def provision(self) -> None:
        """
        Both phases of the policy handshake.
        """
        first = await self.call(
            "Provision",
            E(
                "Provision:Provision",
                E("Settings:DeviceInformation", E("Set", E("Model", "iPhone15,2"), E("OS", "iOS 17"))),
                E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"))),
            ),
        )
        assert first is not None
        policy = first.find("Policies/Policy")
        if policy.findtext("Status") == "2":
            return  # no policy to enforce
        temporary = policy.findtext("PolicyKey")
        second = await self.call(
            "Provision",
            E(
                "Provision:Provision",
                E(
                    "Policies",
                    E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"), E("PolicyKey", temporary), E("Status", "1")),
                ),
            ),
        )
        assert second is not None and second.findtext("Policies/Policy/Status") == "1", second
        self.policyKey = int(second.findtext("Policies/Policy/PolicyKey"))

    async def folderSync(self) -> wbxml.Element:
        answer = await self.call("FolderSync", E("FolderHierarchy:FolderSync", E("SyncKey", self.hierarchyKey)))
        assert answer is not None
        if answer.findtext("Status") != "1":
            return answer
        self.hierarchyKey = answer.findtext("SyncKey")
        for change in answer.find("Changes").children:
            if change.name in ("Add", "Update"):
                self.folders[change.findtext("ServerId")] = (
                    change.findtext("ParentId"),
                    change.findtext("DisplayName"),
                    int(change.findtext("Type")),
                )
            elif change.name == "Delete":
                self.folders.pop(change.findtext("ServerId"), None)
        return answer

    def folderOfType(self, kind: int) -> str:
        return next(fid for fid, (_, _, t) in self.folders.items() if t == kind)

    def folderNamed(self, name: str) -> str:
        return next(fid for fid, (_, n, _) in self.folders.items() if n == name)

    def collectionRequest(
        self, collectionId: str, windowSize: int = 100, commands: Optional[List[wbxml.Element]] = None, filterType: str = "0"
    ) -> wbxml.Element:
        state = self.collections.setdefault(collectionId, Collection())
        collection = E("AirSync:Collection", E("SyncKey", state.key), E("CollectionId", collectionId))
        if state.key != "0":
            collection.add("WindowSize", str(windowSize))
        collection.add(
            "Options",
            E("FilterType", filterType),
            E("AirSyncBase:BodyPreference", *(E(k, v) for k, v in self.bodyPreference)),
        )
        if commands:
            collection.add("Commands", *commands)
        return collection

    def applySync(self, answer: Optional[wbxml.Element]) -> Dict[str, wbxml.Element]:
        """
        Update the mirror from a Sync answer; return the answers per
        collection.
        """
        result: Dict[str, wbxml.Element] = {}
        if answer is None:
            return result
        if answer.findtext("Status") not in (None, "1"):
            raise ProtocolError(f"Sync status {answer.findtext('Status')}")
        for collection in answer.findall("Collections/Collection"):
            collectionId = collection.findtext("CollectionId")
            result[collectionId] = collection
            if collection.findtext("Status") != "1":
                continue
            state = self.collections.setdefault(collectionId, Collection())
            state.key = collection.findtext("SyncKey")
            # Items the phone itself added now have their ServerIds.
            for added in collection.findall("Responses/Add"):
                if added.findtext("Status") == "1":
                    state.items[added.findtext("ServerId")] = E("AirSync:ApplicationData")
            commands = collection.find("Commands")
            for change in commands.children if commands is not None else []:
                serverId = change.findtext("ServerId")
                if change.name == "Add":
                    if serverId in state.items:
                        raise ProtocolError(f"duplicate Add of {serverId}")
                    state.items[serverId] = change.find("ApplicationData")
                elif change.name == "Change":
                    if serverId not in state.items:
                        raise ProtocolError(f"Change of unknown {serverId}")
                    data = state.items[serverId]
                    for field in change.find("ApplicationData").children:
                        data.children = [c for c in data.children if c.qname != field.qname] + [field]
                elif change.name in ("Delete", "SoftDelete"):
                    if state.items.pop(serverId, None) is None:
                        raise ProtocolError(f"{change.name} of unknown {serverId}")
        return result

    async def sync(self, collectionId: str, **kw: Any) -> Dict[str, wbxml.Element]:
        answer = await self.call("Sync", E("AirSync:Sync", E("Collections", self.collectionRequest(collectionId, **kw))))
        return self.applySync(answer)

    async def syncAll(self, collectionId: str, windowSize: int = 100) -> int:
        """
        Sync until nothing more is available; return the number of rounds.
        """
        if self.collections.get(collectionId, Collection()).key == "0":
            await self.sync(collectionId)
        rounds = 0
        while True:
            rounds += 1
            result = await self.sync(collectionId, windowSize=windowSize)
            collection = result.get(collectionId)
            if collection is None or collection.find("MoreAvailable") is None:
                return rounds

    def mirror(self, collectionId: str) -> Dict[str, Tuple[str, str]]:
        """
        serverId -> (subject, read) of the phone's copy.
        """
        state = self.collections.get(collectionId, Collection())
        return {
            sid: (data.findtext("Email:Subject") or "", data.findtext("Email:Read") or "")
            for sid, data in state.items.items()
        }

    async def sendMail(self, mime: bytes, clientId: str, saveInSent: bool = True) -> Optional[wbxml.Element]:
        if float(self.version) < 14.0:
            return await self.call("SendMail", body=mime, params="&SaveInSent=T" if saveInSent else "")
        document = E("ComposeMail:SendMail", E("ClientId", clientId))
        if saveInSent:
            document.add("SaveInSentItems")
        document.add("Mime", mime)
        return await self.call("SendMail", document)


def basicAuth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
