"""Validated settings: the endpoint a graph calls and how Dynasor-CoT reasons and probes."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ._answers import HESITATION_WORDS

Effort = Literal["mild", "low", "mid", "high", "crazy"]

EFFORT_PRESETS: dict[str, tuple[int, int]] = {
    "mild": (8, 64),
    "low": (5, 64),
    "mid": (3, 64),
    "high": (2, 64),
    "crazy": (2, 32),
}
"""effort → (certainty_threshold, chunk_size), as in the Dynasor reference."""

DEFAULT_PROBE_SUFFIX = (
    "... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{"
)


class Endpoint(BaseModel):
    """An OpenAI-compatible server (vLLM) reached through LiteLLM.

    ``api_key`` is a :class:`~pydantic.SecretStr`: it never appears in ``repr``, logs or graph
    state; graphs keep the endpoint in their closure, not in the state.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="LiteLLM model string, e.g. hosted_vllm/smollm2")
    api_base: str = Field(min_length=1, description="Server URL ending in /v1")
    api_key: SecretStr = SecretStr("EMPTY")
    timeout_s: float = Field(default=120.0, gt=0, le=3600, description="Per-request timeout")
    max_retries: int = Field(default=2, ge=0, le=10, description="Retries of transient failures")

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("api_base must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("model")
    @classmethod
    def _litellm_provider(cls, value: str) -> str:
        # A bare served name is a vLLM model: LiteLLM needs the provider prefix to route it.
        return value if "/" in value else f"hosted_vllm/{value}"

    @classmethod
    def from_env(cls, **overrides: str | None) -> Endpoint:
        """Build from ``DYNASOR_MODEL``, ``DYNASOR_API_BASE``, ``DYNASOR_API_KEY`` and overrides."""
        values: dict[str, str] = {}
        for field, var in (("model", "DYNASOR_MODEL"), ("api_base", "DYNASOR_API_BASE"),
                           ("api_key", "DYNASOR_API_KEY")):
            value = overrides.get(field) or os.environ.get(var)
            if value:
                values[field] = value
        return cls.model_validate(values)


class ProbeSettings(BaseModel):
    """How a probe asks for the answer now and reads it: shared by Dynasor-CoT and the agent
    early stop, which differ only in their suffix and stopping rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    probe_suffix: str = Field(default=DEFAULT_PROBE_SUFFIX, min_length=1)
    probe_max_tokens: int = Field(default=20, ge=1, le=1024)
    probe_temperature: float = Field(default=0.6, ge=0, le=2)
    probe_top_p: float = Field(default=0.95, gt=0, le=1)
    hesitation_words: tuple[str, ...] = HESITATION_WORDS
    seed: int | None = Field(default=None, description="Sampling seed passed to the server")


class CoTConfig(ProbeSettings):
    """How Dynasor-CoT reasons, probes and stops. Defaults are the reference's (effort ``mid``)."""

    chunk_size: int = Field(default=64, ge=1, le=8192, description="Tokens reasoned between probes")
    certainty_threshold: int = Field(
        default=3, ge=1, le=64, description="Consecutive agreeing confident probes needed to exit"
    )
    max_tokens: int = Field(
        default=2048, ge=1, le=1_000_000, description="Budget of reasoning tokens, never exceeded"
    )
    temperature: float = Field(default=0.6, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    system_prompt: str | None = Field(default=None, description="Prepended as a system message")

    @classmethod
    def from_effort(cls, effort: Effort, **overrides: object) -> CoTConfig:
        """A config from a named preset (threshold, chunk size) plus any overrides."""
        if effort not in EFFORT_PRESETS:
            raise ValueError(f"effort must be one of {sorted(EFFORT_PRESETS)}, not {effort!r}")
        threshold, chunk = EFFORT_PRESETS[effort]
        values: dict[str, object] = {"certainty_threshold": threshold, "chunk_size": chunk}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


class SCConfig(BaseModel):
    """Self-consistency over Dynasor-CoT paths: how many, when to widen, when to exit.

    The paper's SC detects at 5 samples with threshold 0.7 (MATH, GSM8K); ``width=max_width``
    with ``detect_at=max_width`` is plain fixed-n majority voting.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: CoTConfig = Field(default_factory=CoTConfig, description="How each path reasons")
    width: int = Field(default=4, ge=1, le=256, description="Paths launched at the start")
    max_width: int = Field(default=8, ge=1, le=256, description="Paths never exceeded")
    widen_by: int = Field(default=2, ge=1, le=256, description="Paths added by one widen")
    detect_at: int | None = Field(
        default=None, ge=1, le=256, description="Finished paths needed to exit (default width)"
    )
    threshold: float = Field(default=0.7, gt=0, le=1, description="Answer-entropy Certaindex")
    max_total_tokens: int = Field(
        default=16384, ge=1, le=10_000_000,
        description="Generated tokens (reasoning + probes) of all paths together, never exceeded",
    )

    @model_validator(mode="after")
    def _widths(self) -> SCConfig:
        if self.width > self.max_width:
            raise ValueError("width must not exceed max_width")
        if self.detect_at is not None and self.detect_at > self.max_width:
            raise ValueError("detect_at must not exceed max_width")
        if self.max_total_tokens < self.width * (self.path.probe_max_tokens + 1):
            raise ValueError("max_total_tokens must pay each first path a token and a probe")
        return self

    @property
    def detect(self) -> int:
        """Finished paths needed before the Certaindex may end the run."""
        return self.detect_at if self.detect_at is not None else self.width


class TreeConfig(BaseModel):
    """Settings shared by the tree searches (MCTS, Rebase): steps, bounds and exit thresholds.

    A step is up to ``step_tokens`` tokens of the model's own continuation; a path ends when the
    model ends its turn or at ``max_depth`` steps. The Certaindex combines the reward measure
    (threshold ``reward_threshold``) and, if ``entropy_threshold`` is set, the answer entropy of
    the finished paths; it may end the run once ``detect_at`` paths have finished.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_tokens: int = Field(default=64, ge=1, le=8192)
    max_depth: int = Field(default=8, ge=1, le=256)
    width: int = Field(default=2, ge=1, le=256)
    max_width: int = Field(default=4, ge=1, le=256)
    max_total_tokens: int = Field(
        default=8192, ge=1, le=10_000_000,
        description="Reasoning tokens of all steps together, never exceeded",
    )
    reward_threshold: float = Field(default=0.4, gt=0, le=1)
    entropy_threshold: float | None = Field(default=None, gt=0, le=1)
    detect_at: int = Field(default=3, ge=1, le=256)
    widen_below: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=0.8, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    seed: int | None = None
    system_prompt: str | None = None

    @model_validator(mode="after")
    def _widths(self) -> TreeConfig:
        if self.width > self.max_width:
            raise ValueError("width must not exceed max_width")
        return self


class MCTSConfig(TreeConfig):
    """MCTS: ``width`` children per expansion, at most ``max_width`` per node; UCT selection.
    Reward Certaindex = mean reward of finished paths (paper: threshold 0.4 on GSM8K)."""

    exploration: float = Field(default=1.0, ge=0, le=10, description="UCT constant c")


class RebaseConfig(TreeConfig):
    """Rebase: a beam of ``width`` paths (widened up to ``max_width``) shared among frontier
    nodes by ``softmax(reward / softmax_temperature)``. Reward Certaindex = max reward."""

    width: int = Field(default=4, ge=1, le=256)
    max_width: int = Field(default=8, ge=1, le=256)
    reward_threshold: float = Field(default=0.99, gt=0, le=1)
    softmax_temperature: float = Field(default=0.2, gt=0, le=10)
    widen_by: int = Field(default=4, ge=1, le=256)
