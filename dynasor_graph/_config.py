"""Validated settings: the endpoint a graph calls and how Dynasor-CoT reasons and probes."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

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
