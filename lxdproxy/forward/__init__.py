"""The relays a worker runs: listeners, stream relay (splice + copy), udp/ (sessions, replies,
stream<->datagram), fd budgets and counters. ``forwarder.Forwarder`` runs devices in one process
(a worker's device table, or the daemon itself with ``--workers 0``)."""
