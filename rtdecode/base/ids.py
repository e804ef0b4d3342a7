"""Identifiers shared by the wire and the files: an image id as a message carries it.

Below both rtdecode.wire (which validates messages with it) and rtdecode.bids (which names stimulus
files only when an id is a plain one), so the BIDS writer needs no wire import for it.
"""

from __future__ import annotations

import re

IMAGE_ID = re.compile(r"\A[A-Za-z0-9._-]{0,128}\Z")  # up to 128 of these characters
