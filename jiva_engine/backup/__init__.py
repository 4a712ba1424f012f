"""Backups of volume snapshots to a folder (`jiva backup`), restores and clones (`jiva clone`)."""
