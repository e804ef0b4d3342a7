"""The scanner side: files in, stored and published volumes and betas out.

``side`` (the loop: watching, reading, operator commands), ``runs`` (which series is which run, armed or
stopped), ``volumes`` (reference, preprocessing, storage, GLM hand-off per volume), ``network`` (its
sockets, with CURVE when configured).
"""

from rtdecode.scanner.side import ScannerSide
from rtdecode.scanner.volumes import VolumeEvent

__all__ = ["ScannerSide", "VolumeEvent"]
