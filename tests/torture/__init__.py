"""Crash torture: a checksummed, versioned block workload over our own iSCSI initiator, a fault
injector for real processes, and a verifier that knows exactly which writes were acknowledged."""
