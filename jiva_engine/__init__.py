"""jiva-py: replicated, highly available block storage served over iSCSI."""

__version__ = "0.1.0"
