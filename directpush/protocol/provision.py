# -*- test-case-name: tests.test_commands -*-
"""
Provision (MS-ASPROV): the two-phase policy handshake, remote wipe.
"""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger

from .. import wbxml
from ..wbxml import E
from .core import Policy, Services, policyKey
from .dispatch import Response, wbxmlResponse
from .request import EASRequest

log = Logger()

POLICY_TYPE = "MS-EAS-Provisioning-WBXML"

#: A policy that enforces nothing (digest §7.1), in EASProvisionDoc order.
PERMISSIVE = (
    ("DevicePasswordEnabled", "0"),
    ("AlphanumericDevicePasswordRequired", "0"),
    ("PasswordRecoveryEnabled", "0"),
    ("RequireStorageCardEncryption", "0"),
    ("AttachmentsEnabled", "1"),
    ("MinDevicePasswordLength", "1"),
    ("MaxInactivityTimeDeviceLock", "0"),
    ("MaxDevicePasswordFailedAttempts", "0"),
    ("AllowSimpleDevicePassword", "1"),
    ("DevicePasswordExpiration", "0"),
    ("DevicePasswordHistory", "0"),
    ("AllowStorageCard", "1"),
    ("AllowCamera", "1"),
    ("RequireDeviceEncryption", "0"),
    ("AllowUnsignedApplications", "1"),
    ("AllowUnsignedInstallationPackages", "1"),
    ("MinDevicePasswordComplexCharacters", "1"),
    ("AllowWiFi", "1"),
    ("AllowTextMessaging", "1"),
    ("AllowPOPIMAPEmail", "1"),
    ("AllowBluetooth", "2"),
    ("AllowIrDA", "1"),
    ("RequireManualSyncWhenRoaming", "0"),
    ("AllowDesktopSync", "1"),
    ("MaxCalendarAgeFilter", "0"),
    ("AllowHTMLEmail", "1"),
    ("MaxEmailAgeFilter", "0"),
    ("MaxEmailBodyTruncationSize", "-1"),
    ("MaxEmailHTMLBodyTruncationSize", "-1"),
    ("RequireSignedSMIMEMessages", "0"),
    ("RequireEncryptedSMIMEMessages", "0"),
    ("RequireSignedSMIMEAlgorithm", "0"),
    ("RequireEncryptionSMIMEAlgorithm", "0"),
    ("AllowSMIMEEncryptionAlgorithmNegotiation", "2"),
    ("AllowSMIMESoftCerts", "1"),
    ("AllowBrowser", "1"),
    ("AllowConsumerEmail", "1"),
    ("AllowRemoteDesktop", "1"),
    ("AllowInternetSharing", "1"),
)


def _provisionDoc() -> wbxml.Element:
    doc = E("Provision:EASProvisionDoc", *(E(name, value) for name, value in PERMISSIVE))
    doc.add("UnapprovedInROMApplicationList")
    doc.add("ApprovedApplicationList")
    return doc


def _deviceInformation(document: wbxml.Element) -> Optional[dict]:
    info = document.find("Settings:DeviceInformation/Set")
    if info is None:
        return None
    return {child.name: child.text or "" for child in info.children if child.value is not None}


async def provision(
    services: Services, request: EASRequest, document: Optional[wbxml.Element], body: bytes
) -> Response:
    """
    Answer both phases of the handshake and the remote-wipe report.
    """
    if document is None or document.qname != "Provision:Provision":
        return wbxmlResponse(E("Provision:Provision", E("Status", "2")))
    record = await services.device(request)
    answer = E("Provision:Provision")
    info = _deviceInformation(document)
    if info is not None:
        record["info"] = info
        answer.append(E("Settings:DeviceInformation", E("Status", "1")))
    elif request.versionNumber >= 14.1 and document.find("Policies") is not None and not record.get("policyKey"):
        # 14.1 makes DeviceInformation mandatory in the first request.
        log.info("{user} device {device}: Provision without DeviceInformation", user=request.user, device=request.deviceId)

    wipe = document.find("RemoteWipe")
    if wipe is not None:
        # The device reports on a wipe we asked for.
        status = wipe.findtext("Status")
        log.warn("{user} device {device} reports remote wipe status {status}", user=request.user, device=request.deviceId, status=status)
        if status == "1":
            record["wipe"] = False
            record["wiped"] = True
        answer.append(E("Status", "1"))
        if status != "1":
            answer.append(E("RemoteWipe"))
        await services.saveDevice(request, record)
        return wbxmlResponse(answer)

    policy = document.find("Policies/Policy")
    if policy is None:
        answer.append(E("Status", "2"))
        return wbxmlResponse(answer)
    policyType = policy.findtext("PolicyType")
    answer.append(E("Status", "1"))
    policies = answer.add("Policies")
    reply = policies.add("Policy")
    reply.add("PolicyType", policyType or POLICY_TYPE)
    if policyType != POLICY_TYPE:
        reply.add("Status", "3")
        return wbxmlResponse(answer)

    acknowledged = policy.findtext("PolicyKey")
    if acknowledged is None:
        # Phase one: hand out the policy and a temporary key.
        if services.policy is Policy.NONE:
            reply.add("Status", "2")
            await services.saveDevice(request, record)
            return wbxmlResponse(answer)
        temporary = policyKey()
        record["pendingKey"] = temporary
        reply.add("Status", "1")
        reply.add("PolicyKey", str(temporary))
        reply.add("Data", _provisionDoc())
    else:
        # Phase two: the device acknowledges the temporary key.
        clientStatus = policy.findtext("Status", "1")
        if not acknowledged.isdigit() or int(acknowledged) != record.get("pendingKey"):
            reply.add("Status", "5")
            await services.saveDevice(request, record)
            return wbxmlResponse(answer)
        if clientStatus not in ("1", "2", "4"):
            log.warn(
                "{user} device {device} could not apply the policy (status {status})",
                user=request.user, device=request.deviceId, status=clientStatus,
            )
        final = policyKey()
        record["policyKey"] = final
        record.pop("pendingKey", None)
        reply.add("Status", "1")
        reply.add("PolicyKey", str(final))
    if record.get("wipe"):
        answer.append(E("RemoteWipe"))
    await services.saveDevice(request, record)
    return wbxmlResponse(answer)
