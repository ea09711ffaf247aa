"""The endpoint a run uses when none is given: the environment's, else the embedded local vLLM."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from .._endpoint import Endpoint

LOCAL_PORT = 8471  # the embedded server's default port (away from vLLM's usual 8000)


@contextlib.contextmanager
def default_endpoint(
    model: str | None = None,
    api_base: str | None = None,
    api_key: str | None = None,
    *,
    timeout_s: float | None = None,
    **options: Any,
) -> Iterator[Endpoint]:
    """Yield the endpoint to use: the arguments, else ``$DYNASOR_API_BASE`` and friends, else the
    embedded SmolLM2 vLLM on ``127.0.0.1:8471`` — reused if it answers, else started for the
    duration of the ``with`` block and stopped after it. ``options`` are more
    :class:`Endpoint` fields (``continuation``, ``chat_template_kwargs``, ``think_markers``);
    ``None`` values are ignored, and every value is validated before a server is started."""
    if api_base or os.environ.get("DYNASOR_API_BASE"):
        yield Endpoint.from_env(model=model, api_base=api_base, api_key=api_key,
                                timeout_s=timeout_s, **options)
        return
    if model or api_key:
        raise ValueError("--model and --api-key need --api-base (or $DYNASOR_API_BASE): "
                         "the embedded local server serves its own model without a key")
    from ._server import LocalServer, find_running, wait_if_starting

    local = LocalServer(LOCAL_PORT)
    # A bad timeout or option fails here, before a server is looked for or started.
    endpoint = _with(local.endpoint(), timeout_s=timeout_s, **options)
    if find_running(local.api_base) or wait_if_starting(LOCAL_PORT):
        yield endpoint
        return
    print(f"starting the local vLLM (SmolLM2-135M-Instruct) on {local.api_base} ...",
          file=sys.stderr, flush=True)
    with local.start():
        yield endpoint


def _with(endpoint: Endpoint, **values: Any) -> Endpoint:
    """``endpoint`` with other field values, validated like any other (no silent 0 or -5)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return endpoint
    return Endpoint.model_validate({**endpoint.model_dump(), **values})
