"""Every bound the protocol layer puts on what a peer may send, in one place.

Bytes from the wire are hostile until checked: these bounds are checked
*before* anything is allocated or recursed into (``codec.unpackb`` scans a
payload's structure first; ``messages`` checks a frame's size before decoding
it; ``spaces`` counts a space's elements before building its arrays).
docs/security.md lists them with the flags and settings that change them.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- payloads (trainer <-> simulator, and the relay's control messages) ------

MAX_DEPTH = 64
"""Nesting of containers (arrays, maps, tuples, object arrays) in one payload.
A space description nested ``MAX_SPACE_DEPTH`` deep needs about 3 levels a space."""

MAX_OBJECTS = 262_144
"""Values in one payload. A numpy array is one value however large it is, so
this only bounds the Python objects a frame can make a peer allocate (a 1-byte
msgpack map would otherwise become a 64-byte dict: 16 MiB of them, 1 GiB)."""

MAX_NDIM = 32
"""Dimensions of one array on the wire (numpy's own limit is 64)."""

MAX_ERROR_MESSAGE = 2000
"""Characters of an error message on the wire (longer ones are cut): an env's
exception text may repeat whatever a trainer sent, so it must never grow an
error frame past the frame limit."""

MAX_MESSAGE = 256 * 1024 * 1024
"""Default largest payload a peer takes in one message, however many frames it
came in (a payload above the relay's frame limit travels in chunks), and the
most its compressed arrays may expand to. Each end of a channel says its own
at make; a sender refuses to send more, a receiver refuses an announced size
above it before it keeps a byte. Set with ``init(max_message=...)`` and
``remoterl simulator --max-message``."""

MIN_MESSAGE = 1024 * 1024
"""The smallest ``max_message`` a peer may set or announce."""

# -- control messages, the only payloads the relay decodes --------------------

MAX_HELLO_BYTES = 4096
"""A hello frame's payload. Checked before the hello is decoded, so an
unauthenticated peer cannot make the relay decode more than this."""

MAX_CONTROL_BYTES = 65_536
"""Any later control message's payload (open, release, locate)."""

MAX_CAPABILITY_LENGTH = 32
"""One capability name in a hello; at most ``MAX_CAPABILITIES`` of them."""

MAX_CAPABILITIES = 16

MAX_RELEASE_CHANNELS = 4096
"""Channels one release message may name (clients send several if they hold more)."""

MAX_RESUME_CHANNELS = 1024
"""Channels one resume, resumed, paused or forget message may name (a claim is a
22-character token and a count: 1024 of them fit ``MAX_CONTROL_BYTES``)."""

MAX_CLAIMS_PER_PEER = 4096
"""Resume claims one connection may have waiting at the relay."""

RESUME_WINDOW = 120.0
"""Seconds, by default, a channel whose connection dropped waits to resume: the
simulator keeps its envs that long, the trainer waits that long for them."""

ANSWERS_KEPT = 4
"""Answers a simulator keeps per resumable channel, to answer a re-sent request
again rather than run it twice. A trainer has at most two requests out on a
channel (a step, and an attribute call made while it steps), so four leave
room; each is a reference to a frame already built, but a large one (camera
observations) stays alive that much longer."""

# -- space descriptions a trainer receives from a simulator -------------------

MAX_SPACE_DEPTH = 16
"""Nesting of composite spaces (Dict, Tuple, Sequence, OneOf)."""

MAX_SPACE_BYTES = 256 * 1024 * 1024
"""Memory the arrays of a simulator's spaces may make a trainer allocate (Box
bounds, MultiDiscrete nvec, ...), for the single env and, in a vector env, for
the batched copies (a copy per env): a 166-byte description of an 8000x8000
float64 Box would otherwise cost 2 GiB. 256 MiB fits 16 envs of a 1080p RGB
camera; raise it for more."""


@dataclass(frozen=True)
class DecodeLimits:
    """The bounds one ``codec.unpackb`` call enforces."""

    max_depth: int = MAX_DEPTH
    max_objects: int = MAX_OBJECTS
    max_expanded: int = MAX_MESSAGE  # bytes the payload's compressed arrays may expand to, in all (0: none taken)


DEFAULT_DECODE = DecodeLimits()
PLAIN_DECODE = DecodeLimits(max_expanded=0)
"""For payloads that never carry compressed arrays (control messages, error records)."""

MIN_PACKED_CHARGE = 1024
"""Bytes of the budget a compressed array costs at least, however small it says it
is: decompressing has a cost of its own (senders compress only arrays of at least
``compression.COMPRESS_MIN_BYTES``)."""
MAX_AGENTS = 4096
"""Agents a multi-agent env may name (``possible_agents``): their spaces travel at
make, and every step answer lists the live ones."""
