"""
The reference Exchange ActiveSync device: the adaptive heartbeat, the
carrier simulator and the push tester (C{python -m directpush.device}).

A client, as a phone is: it imports only the codec and value types, never
server rooms.
"""
