"""
The twistd plugin: C{twistd directpush}. It imports nothing of directpush
until twistd asks for it, because plugin discovery imports every plugin.
"""

from twisted.application.service import ServiceMaker

directpush = ServiceMaker(
    "directpush",
    "directpush.tap",
    "Exchange ActiveSync server with Direct Push",
    "directpush",
)
