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


def handlers(services: Services) -> Dict[str, Handler]:
    """
    Every implemented command, ready for a L{Dispatcher}.
    """
    return {
        name: services.provisioned(name, services.serialised(partial(function, services)))
        for name, function in COMMANDS.items()
    }


def makeDispatcher(services: Services) -> Dispatcher:
    return Dispatcher(handlers(services))
