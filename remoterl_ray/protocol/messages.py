"""Control messages between a peer and the relay (frame kind CONTROL).

These are the only payloads the relay decodes. Each is a msgpack map with an
``op`` field; pydantic validates them so a malformed message becomes a coded
``bad_payload``/``bad_hello`` error instead of a crash. What a peer sends the
relay is size-checked before it is decoded (:func:`parse_hello`,
:func:`parse_control` with ``max_bytes``), and every field is bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from . import codec
from .errors import ErrorCode, ProtocolError
from .frames import PROTOCOL_VERSION, Kind, Op, pack
from .limits import (
    PLAIN_DECODE,
    MAX_CAPABILITIES,
    MAX_CAPABILITY_LENGTH,
    MAX_CONTROL_BYTES,
    MAX_HELLO_BYTES,
    MAX_RELEASE_CHANNELS,
    MAX_RESUME_CHANNELS,
    DecodeLimits,
)

Role = Literal["trainer", "simulator"]

# Capabilities: a peer lists the optional messages it understands in its hello,
# the relay lists those it answers in its welcome; neither sends the other one
# it did not list, so older peers and relays keep working.
CAP_RECONNECT = "reconnect"  # peer: follows a Reconnect when idle
CAP_LOCATE = "locate"  # relay: answers Locate with Regions
CAP_NOTICE = "notice"  # peer: understands Notice (quota warnings and the like)
CAP_RESUME = "resume"  # peer: resumes channels (Paused, Resume, Resumed, Forget); see docs/protocol.md
CAP_CHUNKS = "chunks"  # relay: forwards messages cut into chunks (the op's MORE bit); see docs/protocol.md

# A channel's resume token: 128 random bits, URL-safe base64 (``secrets.token_urlsafe(16)``).
Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Hello(_Message):
    """First frame of every connection."""

    op: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    role: Role
    api_key: str | None = Field(default=None, max_length=512)
    name: str = Field(default="", max_length=200)
    capabilities: list[Annotated[str, StringConstraints(max_length=MAX_CAPABILITY_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_CAPABILITIES
    )
    max_envs: int = Field(default=256, ge=1, le=65536)  # simulators: most envs it will host


class Quota(_Message):
    """The workspace's plan and traffic this month, for the start-up banner."""

    plan: str | None = None  # None: a key with no plan (the relay's own --api-key)
    used_bytes: int = 0
    included_bytes: int | None = None  # None: no cap

    @property
    def exhausted(self) -> bool:
        """The plan's included traffic is used up."""
        return self.included_bytes is not None and self.used_bytes >= self.included_bytes

    def banner(self, workspace: str) -> str:
        """The one line a simulator or trainer prints at start."""
        used = human_bytes(self.used_bytes)
        if self.included_bytes is None:
            plan = f" ({self.plan} plan)" if self.plan else ""
            return f"remoterl: workspace {workspace}{plan}: {used} used this month, no cap"
        share = self.used_bytes / self.included_bytes * 100 if self.included_bytes else 100.0
        return (
            f"remoterl: workspace {workspace} ({self.plan} plan): {used} of "
            f"{human_bytes(self.included_bytes)} included used this month ({share:.0f}%)"
        )


def human_bytes(n: float) -> str:
    """Decimal units, as traffic is billed: 1 GB = 10^9 bytes."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


class Welcome(_Message):
    op: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    peer_id: str
    workspace: str
    simulators: int = 0  # simulators of the workspace online now
    max_frame: int
    capabilities: list[str] = Field(default_factory=list)
    region: str = ""  # the relay region this connection reached
    quota: Quota | None = None  # None: this relay keeps no accounts


class Open(_Message):
    """Trainer asks for ``envs`` envs spread with at most ``per_simulator`` per simulator."""

    op: Literal["open"] = "open"
    envs: int = Field(ge=1, le=65536)
    per_simulator: int = Field(default=2, ge=1, le=65536)


class Shard(_Message):
    channel: int
    envs: int
    simulator: str
    token: str | None = None  # resume token (both ends speak ``resume``); the trainer hands it to the simulator


class Opened(_Message):
    op: Literal["opened"] = "opened"
    shards: list[Shard]


class Release(_Message):
    """Trainer is done with these channels."""

    op: Literal["release"] = "release"
    channels: list[int] = Field(max_length=MAX_RELEASE_CHANNELS)


class Detach(_Message):
    """Relay tells a simulator that a channel's trainer is gone."""

    op: Literal["detach"] = "detach"
    channel: int


class Simulators(_Message):
    """Relay tells trainers how many simulators their workspace has online."""

    op: Literal["simulators"] = "simulators"
    count: int


class Locate(_Message):
    """Trainer asks where its workspace's simulators are (answered by ``Regions``)."""

    op: Literal["locate"] = "locate"


class Region(_Message):
    name: str
    url: str | None = None  # None: the relay this connection reached
    simulators: int = 0  # of the asking trainer's workspace


class Regions(_Message):
    op: Literal["regions"] = "regions"
    regions: list[Region]


class Reconnect(_Message):
    """Relay asks an idle peer (no channel) that listed ``reconnect`` to dial
    again: its workspace's affinity now points to another replica. The peer
    simply dials the same URL; ignoring it loses nothing."""

    op: Literal["reconnect"] = "reconnect"
    reason: str = ""


class Paused(_Message):
    """Relay tells a peer that the other end of these channels lost its connection:
    the channel ids are dead, and each channel waits for both ends to claim it
    again with ``Resume`` (the peer sends its own claim)."""

    op: Literal["paused"] = "paused"
    channels: list[int] = Field(max_length=MAX_RESUME_CHANNELS)


class Claim(_Message):
    token: Token
    envs: int = Field(ge=1, le=65536)


class Resume(_Message):
    """A peer claims channels it still holds, by token, after its connection or the
    other end's dropped. The relay pairs a trainer's claim with the simulator's claim
    of the same token (and envs) in the same workspace, then says ``Resumed``."""

    op: Literal["resume"] = "resume"
    channels: list[Claim] = Field(max_length=MAX_RESUME_CHANNELS)


class Rebound(_Message):
    token: Token
    channel: int


class Resumed(_Message):
    """Relay tells both ends of resumed channels the channel id each token has now."""

    op: Literal["resumed"] = "resumed"
    channels: list[Rebound] = Field(max_length=MAX_RESUME_CHANNELS)


class Forget(_Message):
    """A peer withdraws its claims (its resume window ran out, or it closed the envs)."""

    op: Literal["forget"] = "forget"
    tokens: list[Token] = Field(max_length=MAX_RESUME_CHANNELS)


_T = TypeVar("_T")


def resume_batches(items: list[_T]) -> Iterator[list[_T]]:
    """``items`` in runs of at most ``MAX_RESUME_CHANNELS``: what one paused, resume,
    resumed or forget message may name (longer lists go in several messages)."""
    for start in range(0, len(items), MAX_RESUME_CHANNELS):
        yield items[start : start + MAX_RESUME_CHANNELS]


class Notice(_Message):
    """Relay tells a peer that listed ``notice`` something it should show its user
    (``code`` is an ``ErrorCode`` value, e.g. ``quota_exceeded``); nothing changes
    for the running session."""

    op: Literal["notice"] = "notice"
    code: str
    message: str


ControlMessage = Annotated[
    Union[
        Hello, Welcome, Open, Opened, Release, Detach, Simulators, Locate, Regions, Reconnect, Notice,
        Paused, Resume, Resumed, Forget,
    ],
    Field(discriminator="op"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ControlMessage)


# What a peer may make the relay decode: a hello is a handful of short fields;
# the largest later message is a release naming MAX_RELEASE_CHANNELS channels.
# Neither ever holds a compressed array (max_expanded 0: refused by the scan, before anything is built).
HELLO_DECODE = DecodeLimits(max_depth=4, max_objects=4 * MAX_CAPABILITIES + 64, max_expanded=0)
CONTROL_DECODE = DecodeLimits(
    max_depth=8, max_objects=max(MAX_RELEASE_CHANNELS, 5 * MAX_RESUME_CHANNELS) + 64, max_expanded=0
)


def parse_control(
    payload: bytes | memoryview, *, max_bytes: int | None = None, limits: DecodeLimits = PLAIN_DECODE
) -> Any:
    """Decode and validate a CONTROL payload; raises ``ProtocolError`` (bad_payload).

    ``max_bytes`` is checked before anything is decoded (the relay passes
    ``MAX_CONTROL_BYTES`` for what peers send it)."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise ProtocolError(
            f"control message of {len(payload)} bytes exceeds the limit of {max_bytes}", code=ErrorCode.BAD_PAYLOAD
        )
    data = codec.unpackb(payload, limits)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ProtocolError(
            f"invalid control message: {where or 'message'}: {first.get('msg', exc)}", code=ErrorCode.BAD_PAYLOAD
        ) from None


def parse_peer_control(payload: bytes | memoryview) -> Any:
    """A control message a connected peer sent the relay: size, shape, then schema."""
    return parse_control(payload, max_bytes=MAX_CONTROL_BYTES, limits=CONTROL_DECODE)


def parse_hello(payload: bytes | memoryview) -> Hello:
    """The first message of a connection, checked for size and shape before the key
    is looked at; raises ``ProtocolError`` with code ``bad_hello``."""
    try:
        message = parse_control(payload, max_bytes=MAX_HELLO_BYTES, limits=HELLO_DECODE)
    except ProtocolError as exc:
        raise ProtocolError(exc.message, code=ErrorCode.BAD_HELLO) from None
    if not isinstance(message, Hello):
        raise ProtocolError(f"the first message must be a hello, not {message.op!r}", code=ErrorCode.BAD_HELLO)
    return message


def encode_control(message: _Message) -> bytes:
    return codec.packb(message.model_dump())


def control_frame(message: _Message, seq: int = 0) -> bytes:
    return pack(Kind.CONTROL, Op.NONE, 0, seq, encode_control(message))


def error_frame(error: dict[str, Any], *, op: int = Op.NONE, channel: int = 0, seq: int = 0) -> bytes:
    """An ERROR frame carrying a ``RemoteRLError.to_wire()`` record."""
    return pack(Kind.ERROR, op, channel, seq, codec.packb(error))
