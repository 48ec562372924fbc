# -*- test-case-name: tests.test_commands -*-
"""
The command table: which function answers which EAS command, wrapped in
the provisioning gate and per-device serialisation.
"""

from __future__ import annotations

from functools import partial
from typing import Dict

from .compose import compose
from .core import CommandFunction, Services
from .dispatch import Dispatcher, Handler
from .folders import folderCreate, folderDelete, folderSync, folderUpdate
from .items import getAttachment, getItemEstimate, itemOperations, moveItems
from .ping import ping
from .provision import provision
from .search import find, resolveRecipients, search
from .settings import settings
from .sync import sync

COMMANDS: Dict[str, CommandFunction] = {
    "Sync": sync,
    "SendMail": compose,
    "SmartForward": compose,
    "SmartReply": compose,
    "GetAttachment": getAttachment,
    "FolderSync": folderSync,
    "FolderCreate": folderCreate,
    "FolderDelete": folderDelete,
    "FolderUpdate": folderUpdate,
    "MoveItems": moveItems,
    "GetItemEstimate": getItemEstimate,
    "Search": search,
    "Settings": settings,
    "ItemOperations": itemOperations,
    "Provision": provision,
    "ResolveRecipients": resolveRecipients,
    "Find": find,
}


#: Commands that may wait for changes: they take the device's lock for
#: their state work only, never while waiting.
WAITING = frozenset({"Ping", "Sync"})


def handlers(services: Services) -> Dict[str, Handler]:
    """
    Every implemented command, ready for a L{Dispatcher}. Ping only when
    there is a push hub to wait on.
    """
    table = dict(COMMANDS)
    if services.hub is not None:
        table["Ping"] = ping
    return {
        name: services.provisioned(
            name, partial(function, services) if name in WAITING else services.serialised(partial(function, services))
        )
        for name, function in table.items()
    }


def makeDispatcher(services: Services) -> Dispatcher:
    return Dispatcher(handlers(services))
