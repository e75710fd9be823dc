"""What a simulator reports about an env it made (the answer to make, make_vec
and spaces), checked field by field on the trainer.

The trainer builds real Gymnasium spaces, metadata and an ``EnvSpec`` from
it, so a malformed or oversized description must become one coded
``bad_payload`` error here, not a bare exception (or a 2 GiB allocation)
somewhere in the env classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from gymnasium import spaces
from gymnasium.envs.registration import parse_env_id
from gymnasium.error import Error as GymnasiumError
from gymnasium.vector import AutoresetMode
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator, model_validator

from .compression import Compression
from .compression import from_wire as compression_from_wire
from .errors import ErrorCode, ProtocolError
from .limits import MAX_AGENTS, MAX_SPACE_BYTES
from .spaces import space_bytes, space_from_wire


class SpecInfo(BaseModel):
    """The parts of the simulator's ``EnvSpec`` a trainer mirrors."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=300)
    entry_point: str | None = Field(default=None, max_length=300)  # "module:attr", as data only
    vector_entry_point: str | None = Field(default=None, max_length=300)
    max_episode_steps: int | None = Field(default=None, ge=0)
    reward_threshold: float | None = None
    nondeterministic: bool = False
    order_enforce: bool = True
    disable_env_checker: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _an_id_gymnasium_parses(cls, env_id: str) -> str:
        try:
            parse_env_id(env_id)
        except GymnasiumError as exc:  # the trainer builds an EnvSpec from it
            raise ValueError(str(exc)) from None
        return env_id


AgentId = StrictStr | StrictInt
AgentIds = list[AgentId]


class _AgentFields(BaseModel):
    """A multi-agent env's agents: every possible one with its spaces (in that order),
    and the live ones of each env of the shard."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["parallel", "aec"]
    possible_agents: AgentIds = Field(min_length=1, max_length=MAX_AGENTS)
    observation_spaces: list[dict[str, Any]] = Field(max_length=MAX_AGENTS)
    action_spaces: list[dict[str, Any]] = Field(max_length=MAX_AGENTS)
    agents: list[Annotated[AgentIds, Field(max_length=MAX_AGENTS)]] = Field(max_length=65536)

    @model_validator(mode="after")
    def _one_space_each(self) -> "_AgentFields":
        count = len(self.possible_agents)
        if len(set(self.possible_agents)) != count:
            raise ValueError("possible_agents repeats an agent")
        if len(self.observation_spaces) != count or len(self.action_spaces) != count:
            raise ValueError("there must be one observation and one action space per possible agent")
        return self


class _Fields(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    observation_space: dict[str, Any] | None = None  # absent for a multi-agent env: its agents have their own
    action_space: dict[str, Any] | None = None
    agents: _AgentFields | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SpecInfo | None = None
    render_mode: str | None = Field(default=None, max_length=100)
    num_envs: int = Field(default=1, ge=1)
    observation_spaces: list[dict[str, Any]] | None = None  # a vector env's, per env, if they may differ
    vectorization_mode: Literal["sync", "async", "vector_entry_point"] | None = None
    per_env_infos: bool = False  # a vector shard answers one info map per env
    compression: dict[str, Any] | None = None  # what the simulator compresses its answers with
    max_message: int = Field(default=0, ge=0)  # the largest request it takes (0: one frame)

    @model_validator(mode="after")
    def _spaces_or_agents(self) -> "_Fields":
        if self.agents is None and (self.observation_space is None or self.action_space is None):
            raise ValueError("an env without agents must describe its observation_space and action_space")
        if self.agents is not None and len(self.agents.agents) != self.num_envs:
            raise ValueError("a multi-agent description lists the live agents of each env")
        return self

    @field_validator("metadata")
    @classmethod
    def _known_autoreset_mode(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        mode = metadata.get("autoreset_mode")
        if mode is not None and mode not in {m.value for m in AutoresetMode}:
            raise ValueError(f"unknown autoreset_mode {mode!r:.40}")
        return metadata


@dataclass(frozen=True)
class AgentSpaces:
    """A multi-agent env's agents as the trainer uses them."""

    kind: str  # "parallel" or "aec"
    possible_agents: list[Any]
    observation_spaces: dict[Any, spaces.Space]
    action_spaces: dict[Any, spaces.Space]
    agents: list[list[Any]]  # live agents of each env, when made


@dataclass(frozen=True)
class EnvDescription:
    observation_space: spaces.Space | None  # None: a multi-agent env (see ``agents``)
    action_space: spaces.Space | None
    metadata: dict[str, Any]
    spec: SpecInfo | None
    render_mode: str | None
    num_envs: int
    observation_spaces: list[spaces.Space] | None = None
    vectorization_mode: str | None = None
    per_env_infos: bool = False
    compression: Compression | None = None
    max_message: int = 0
    agents: AgentSpaces | None = None


def parse_description(value: Any, *, max_space_bytes: int = MAX_SPACE_BYTES) -> EnvDescription:
    """Check a description from a simulator; raises ``ProtocolError`` (bad_payload)."""
    try:
        fields = _Fields.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "description"
        raise ProtocolError(
            f"simulator sent a malformed env description: {where}: {first.get('msg', exc)}",
            code=ErrorCode.BAD_PAYLOAD,
        ) from None
    budget = _Budget(max_space_bytes)
    agents = None if fields.agents is None else _agent_spaces(fields.agents, budget)
    observation_space = None if fields.observation_space is None else budget.space(fields.observation_space)
    action_space = None if fields.action_space is None else budget.space(fields.action_space)
    observation_spaces = None
    if fields.observation_spaces is not None:
        if len(fields.observation_spaces) != fields.num_envs:
            raise ProtocolError(
                f"simulator described {len(fields.observation_spaces)} observation spaces for {fields.num_envs} envs",
                code=ErrorCode.BAD_PAYLOAD,
            )
        observation_spaces = [budget.space(desc) for desc in fields.observation_spaces]
    return EnvDescription(
        observation_space=observation_space,
        action_space=action_space,
        metadata=dict(fields.metadata),
        spec=fields.spec,
        render_mode=fields.render_mode,
        num_envs=fields.num_envs,
        observation_spaces=observation_spaces,
        vectorization_mode=fields.vectorization_mode,
        per_env_infos=fields.per_env_infos,
        compression=compression_from_wire(fields.compression),
        max_message=fields.max_message,
        agents=agents,
    )


class _Budget:
    """What the spaces of one description may still allocate."""

    def __init__(self, left: int) -> None:
        self.left = left

    def space(self, desc: dict[str, Any]) -> spaces.Space:
        space = space_from_wire(desc, max_bytes=self.left)
        self.left -= space_bytes(space)
        return space


def _agent_spaces(fields: _AgentFields, budget: _Budget) -> AgentSpaces:
    ids = fields.possible_agents
    return AgentSpaces(
        kind=fields.kind,
        possible_agents=list(ids),
        observation_spaces={aid: budget.space(d) for aid, d in zip(ids, fields.observation_spaces)},
        action_spaces={aid: budget.space(d) for aid, d in zip(ids, fields.action_spaces)},
        agents=[list(live) for live in fields.agents],
    )
