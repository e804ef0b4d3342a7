"""The wire layer: every byte that crosses a socket.

``protocol`` (frames <-> messages), ``schema`` (each message type's typed fields), ``sockets``
(PUB/SUB with replay, socket limits), ``reliable`` (the acknowledged betas channel), ``security``
(CURVE keys and allow-lists), ``control`` (operator commands). Nothing here knows about scanners,
GLMs or models; every stage and the GUI speak to each other only through it.
"""
