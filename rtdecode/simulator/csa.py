"""Write a Siemens CSA2 ("SV10") header, the private block that marks and describes a mosaic.

Layout as nibabel's csareader reads it: 'SV10', 4 unused bytes, tag count, a check word, then for
each tag a 64-byte name, VM, VR, syngo data type, item count and a check word, each item a 16-byte
item header (its length second) and its null-terminated text padded to 4 bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

CHECK = 77


def encode_csa2(tags: dict[str, tuple[str, Sequence[object]]]) -> bytes:
    """Encode ``{name: (vr, values)}`` as a CSA2 header."""
    out = [b"SV10", b"\x04\x03\x02\x01", struct.pack("<2I", len(tags), CHECK)]
    for name, (vr, values) in tags.items():
        values = list(values)
        out.append(struct.pack("<64si4s3i", name.encode(), len(values), vr.encode(), 0, len(values), CHECK))
        for value in values:
            text = (str(value)).encode() + b"\x00"
            out.append(struct.pack("<4i", len(text), len(text), CHECK, len(text)))
            out.append(text + b"\x00" * (-len(text) % 4))
    return b"".join(out)
