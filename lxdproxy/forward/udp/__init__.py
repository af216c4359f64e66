"""The UDP relay a worker runs: sessions, reply queues, pktinfo, stream<->datagram bridge."""
