"""The defects a review found (issue 10), each pinned by a test that failed before its fix.

- the reward server got ``Bearer EMPTY``: the CLI built the classifier's endpoint without the
  key (the scripted server now records headers, so a dropped key no longer passes);
- ``--timeout`` skipped validation (``-5`` reached LiteLLM, ``0`` was ignored);
- ``--model`` / ``--api-key`` without an api_base were dropped and the local server started;
- SC nested a ``RetryPolicy`` around its path's own: 9 attempts for one failing request;
- 429/5xx were filed as unreachable; refusals must carry the server's own message;
- examples/studio.py took the API key from ``configurable``, which LangGraph writes into every
  checkpoint's metadata: now the key comes from the environment only, and a key in
  ``configurable`` is refused. The key must still arrive where it belongs: the server.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import ROUTE_IDS, ROUTES, authorizations, with_fields
from scripted_server import Script, ScriptedServer, closed_port

import dynasor_graph.local._server as local_server
from dynasor_graph import (
    CoTConfig,
    DynasorError,
    Endpoint,
    EndpointError,
    EndpointUnreachable,
    SCConfig,
    ServerBusy,
    ServerRefused,
    create_cot,
    create_sc,
)
from dynasor_graph.cli import main
from dynasor_graph.eval import DataFormatError

KEY = "sk-secret-7f3a"
ROOT = Path(__file__).resolve().parent.parent


class ClassifyScript:
    """A vLLM classifier (``/classify``) that rates every step ``good`` with 0.9."""

    def __init__(self) -> None:
        self.log: list[dict[str, Any]] = []

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 404, {"message": "not a chat model"}

    def classify(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.log.append(body)
        data = [{"index": i, "label": "good", "probs": [0.1, 0.9], "num_classes": 2}
                for i, _ in enumerate(body["input"])]
        return 200, {"data": data, "usage": {"prompt_tokens": 5, "total_tokens": 5}}


@pytest.fixture
def no_local_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything looks for, waits for or starts the embedded local vLLM."""
    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the local server must not be looked for or started")

    for name in ("DYNASOR_API_BASE", "DYNASOR_MODEL", "DYNASOR_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(local_server, "find_running", forbidden)
    monkeypatch.setattr(local_server, "wait_if_starting", forbidden)
    monkeypatch.setattr(local_server.LocalServer, "start", forbidden)


# --- the key reaches both servers, and never the output -------------------------------------

def test_cli_sends_the_api_key_to_the_model_and_to_the_reward_server(
    scripted: ScriptedServer, no_local_server: None, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted.script.seeds = {7 + k: Script(reasoning=["so ", "\\boxed{5} "]) for k in (1, 2)}
    with ScriptedServer(ClassifyScript()) as reward_server:
        code = main(["solve", "What is 2 + 3?", "--algorithm", "mcts", "--seed", "7",
                     "--budget", "100", "--model", "scripted", "--api-base", scripted.api_base,
                     "--api-key", KEY, "--reward-api-base", reward_server.api_base,
                     "--reward-model", "prm", "--json"])
        classify = reward_server.requests_to("/classify")
    out = capsys.readouterr()
    assert code == 0, out.err
    assert classify and authorizations(classify) == {f"Bearer {KEY}"}  # was "Bearer EMPTY"
    assert classify[0]["body"]["model"] == "prm"
    chat = scripted.generations()
    assert chat and authorizations(chat) == {f"Bearer {KEY}"}
    assert KEY not in out.out + out.err


# --- flags are validated before any server is reached ---------------------------------------

@pytest.mark.parametrize("timeout", ["-5", "0"])
def test_cli_refuses_a_timeout_that_is_not_positive(
    timeout: str, scripted: ScriptedServer, no_local_server: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["solve", "q", "--model", "scripted", "--api-base", scripted.api_base,
                 "--timeout", timeout])
    out = capsys.readouterr()
    assert code == 1
    assert out.err.startswith("dynasor-graph: invalid timeout_s:") and "greater than 0" in out.err
    assert len(out.err.strip().splitlines()) == 1 and out.out == ""
    assert scripted.requests == []  # not one request with a bad timeout (0 was ignored, -5 sent)


@pytest.mark.parametrize("timeout", ["-5", "0"])
def test_cli_refuses_a_bad_timeout_before_the_local_server_is_looked_for(
    timeout: str, no_local_server: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["solve", "q", "--timeout", timeout]) == 1
    assert "invalid timeout_s" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--model", "m"], ["--api-key", KEY],
                                   ["--model", "m", "--api-key", KEY]])
def test_cli_model_or_key_without_an_api_base_is_an_error_not_the_local_server(
    flags: list[str], no_local_server: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["solve", "q", *flags]) == 1  # was: dropped, and the local server started
    out = capsys.readouterr()
    assert "need --api-base (or $DYNASOR_API_BASE)" in out.err
    assert len(out.err.strip().splitlines()) == 1 and out.out == ""
    assert KEY not in out.err


# --- retries: once, and only what is worth retrying -----------------------------------------

def sc_config() -> SCConfig:
    path = CoTConfig(chunk_size=4, certainty_threshold=2, max_tokens=16, seed=0,
                     probe_max_tokens=4)
    return SCConfig(path=path, width=1, max_width=1)


async def test_sc_retries_a_failing_request_max_retries_times_not_squared(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.fail_next = [503] * 20
    with pytest.raises(ServerBusy, match="scripted failure 503"):
        await create_sc(route_endpoint, sc_config()).ainvoke({"question": "q"})
    attempts = route_endpoint.max_retries + 1
    # was 9: a RetryPolicy around the path's own retrying nodes
    assert len(scripted.generations()) == attempts == 3
    assert len(scripted.script.fail_next) == 20 - attempts


async def test_sc_recovers_from_busy_answers_within_its_retries(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.fail_next = [503, 429]
    scripted.script.probes = ["5}"]
    result = await create_sc(route_endpoint, sc_config()).ainvoke({"question": "q"})
    assert result["answer"] == "5"
    assert len(scripted.generations()) == len(scripted.script.log) + 2
    assert result["usage"] == scripted.script.usage()


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_busy_answers_are_server_busy_and_retried(
    status: int, scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.fail_next = [status] * 3
    with pytest.raises(ServerBusy) as caught:
        await create_cot(route_endpoint, CoTConfig(chunk_size=4)).ainvoke({"question": "q"})
    assert caught.value.status_code == status
    assert not isinstance(caught.value, EndpointUnreachable)  # was filed as unreachable
    assert f"scripted failure {status}" in str(caught.value)
    assert scripted.api_base in str(caught.value)
    assert len(scripted.generations()) == 3  # max_retries = 2


async def test_a_refusal_carries_the_servers_message_and_is_not_retried(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    message = "This model's maximum context length is 2048 tokens (see litellm.docs: {limits})"
    scripted.script.refuse_message = message
    with pytest.raises(ServerRefused) as caught:
        await create_cot(route_endpoint, CoTConfig(chunk_size=4)).ainvoke({"question": "q"})
    assert caught.value.status_code == 400
    assert str(caught.value) == f"{scripted.api_base} refused the request: {message}"
    assert len(scripted.generations()) == 1


@pytest.mark.parametrize(("continuation", "client"), ROUTES, ids=ROUTE_IDS)
async def test_a_refused_connection_is_unreachable(continuation: str, client: str) -> None:
    port = closed_port()  # a loopback port that nothing listens on
    endpoint = Endpoint.model_validate({
        "model": "scripted", "api_base": f"http://127.0.0.1:{port}/v1", "timeout_s": 5,
        "max_retries": 1, "continuation": continuation, "client": client})
    with pytest.raises(EndpointUnreachable, match=f"cannot reach http://127.0.0.1:{port}/"):
        await create_cot(endpoint, CoTConfig(chunk_size=4)).ainvoke({"question": "q"})


async def test_a_dropped_generation_is_unreachable_and_retried(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    # the server accepts the connection, then closes it without an answer: on the token route
    # this reaches /v1/completions (after /tokenize answered), through either client
    scripted.script.drop_next = 3
    with pytest.raises(EndpointUnreachable, match=scripted.api_base):
        await create_cot(route_endpoint, CoTConfig(chunk_size=4)).ainvoke({"question": "q"})
    assert len(scripted.generations()) == 3  # max_retries = 2
    assert scripted.script.drop_next == 0 and scripted.script.log == []


async def test_a_reply_slower_than_the_timeout_is_unreachable_and_retried(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.generation_delay_s = 3.0
    endpoint = with_fields(route_endpoint, timeout_s=0.5)
    with pytest.raises(EndpointUnreachable, match=scripted.api_base):
        await create_cot(endpoint, CoTConfig(chunk_size=4)).ainvoke({"question": "q"})
    assert len(scripted.generations()) == 3  # max_retries = 2, each cut at the timeout


@pytest.mark.parametrize("client", ["litellm", "openai"])
async def test_a_token_prompt_past_max_model_len_is_refused_before_anything_is_sent(
    scripted: ScriptedServer, client: str
) -> None:
    scripted.token_api, scripted.script.max_model_len = True, 3  # "q" renders to 4 ids
    endpoint = Endpoint(model="scripted", api_base=scripted.api_base, timeout_s=10,
                        continuation="tokens", client=client)
    with pytest.raises(ServerRefused, match=r"the prompt is 4 tokens.*max_model_len 3") as caught:
        await create_cot(endpoint, CoTConfig(chunk_size=4)).ainvoke({"question": "q"})
    assert caught.value.status_code is None  # the program's own refusal: nothing was sent
    assert scripted.generations() == [] and scripted.script.log == []


async def test_a_dropped_generation_is_recovered_within_the_retries(
    scripted: ScriptedServer, route_endpoint: Endpoint
) -> None:
    scripted.script.drop_next, scripted.script.probes = 1, ["7}"]
    config = CoTConfig(chunk_size=4, certainty_threshold=1)
    result = await create_cot(route_endpoint, config).ainvoke({"question": "q"})
    assert result["answer"] == "7"
    assert len(scripted.generations()) == len(scripted.script.log) + 1
    assert result["usage"] == scripted.script.usage()


def test_the_error_hierarchy() -> None:
    assert issubclass(DataFormatError, DynasorError) and issubclass(DataFormatError, ValueError)
    for error in (EndpointUnreachable, ServerBusy, ServerRefused):
        assert issubclass(error, EndpointError) and issubclass(error, DynasorError)
    assert not issubclass(ServerBusy, EndpointUnreachable)
    assert not issubclass(ServerRefused, ServerBusy | EndpointUnreachable)


# --- secrets never travel through configurable (examples/studio.py) ------------------------

def load_studio() -> ModuleType:
    spec = importlib.util.spec_from_file_location("studio_example", ROOT / "examples/studio.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def studio() -> ModuleType:
    return load_studio()


async def test_langgraph_writes_configurable_into_checkpoint_metadata(
    scripted: ScriptedServer, scripted_endpoint: Endpoint
) -> None:
    """Why a key must not travel in ``configurable``: LangGraph stores it (1.2.22)."""
    from langgraph.checkpoint.memory import InMemorySaver

    scripted.script.probes = ["5}"]
    saver = InMemorySaver()
    graph = create_cot(scripted_endpoint, CoTConfig(chunk_size=4, max_tokens=8),
                       checkpointer=saver)
    await graph.ainvoke({"question": "q"}, {"configurable": {"thread_id": "t", "api_key": KEY}})
    assert {t.metadata.get("api_key") for t in saver.list(None)} == {KEY}


def everything_stored(tuples: list[Any], state: Any) -> str:
    return repr([(t.config, t.checkpoint, t.metadata, t.pending_writes) for t in tuples]) + repr(
        state)


@pytest.mark.parametrize("saver_kind", ["memory", "sqlite"])
async def test_studio_key_reaches_the_server_and_no_checkpoint(
    saver_kind: str, studio: ModuleType, scripted: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    monkeypatch.setenv("DYNASOR_API_KEY", KEY)
    monkeypatch.delenv("DYNASOR_API_BASE", raising=False)
    scripted.script.probes = ["5}"]
    # api_base and model are not secret: configurable may carry them (LangGraph stores them).
    config: Any = {"configurable": {
        "thread_id": "studio-1", "api_base": scripted.api_base, "model": "scripted",
        "max_tokens": 16, "chunk_size": 4, "certainty_threshold": 2, "seed": 0}}
    database = tmp_path / "runs.sqlite"
    async with AsyncSqliteSaver.from_conn_string(str(database)) as sqlite:
        saver = InMemorySaver() if saver_kind == "memory" else sqlite
        # how langgraph dev attaches its checkpointer to a factory's graph
        graph = studio.dynasor_cot(config).copy(update={"checkpointer": saver})
        result = await graph.ainvoke({"question": "q"}, config)
        tuples = [t async for t in saver.alist(None)]
        state = [s async for s in graph.aget_state_history(config)]
    assert result["answer"] == "5" and len(tuples) > 3
    assert tuples[0].metadata.get("max_tokens") == 16  # configurable did reach the metadata
    assert KEY not in everything_stored(tuples, state) + repr(result)
    if saver_kind == "memory":
        assert KEY.encode() not in repr((saver.storage, saver.writes, saver.blobs)).encode()
    else:
        files = [p for p in tmp_path.iterdir() if p.name.startswith("runs.sqlite")]
        assert files and all(KEY.encode() not in p.read_bytes() for p in files)
    chat = scripted.generations()  # ... and the key did arrive where it must
    assert chat and authorizations(chat) == {f"Bearer {KEY}"}


@pytest.mark.parametrize("options", [
    {"api_key": KEY}, {"openai_api_key": KEY}, {"token": KEY}, {"apiKey": KEY},
    {"api_base": f"http://user:{KEY}@127.0.0.1:9/v1"},
])
@pytest.mark.parametrize("graph", ["dynasor_cot", "dynasor_sc", "dynasor_mcts",
                                   "dynasor_rebase", "agent", "agent_graph"])
def test_studio_refuses_a_secret_in_configurable(
    graph: str, options: dict[str, str], studio: ModuleType
) -> None:
    with pytest.raises(ValueError, match=r"DYNASOR_API_KEY") as caught:
        getattr(studio, graph)({"configurable": {"thread_id": "t", **options}})
    assert KEY not in str(caught.value)


def test_studio_leaves_settings_and_copied_headers_alone(studio: ModuleType) -> None:
    studio.refuse_secrets({"max_tokens": 9, "token_budget": 9, "thread_id": "t",
                           "x-request-id": "r", "langgraph_auth_user_id": "u",
                           "api_base": "http://127.0.0.1:9/v1", "model": "m"})


# --- packaging: evaluation lives behind the eval extra --------------------------------------

def test_the_core_imports_no_evaluation_or_unused_dependency() -> None:
    import subprocess
    import sys

    code = ("import sys, dynasor_graph, dynasor_graph.cli, dynasor_graph.eval; "
            "print(sorted(m for m in ('tqdm', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_evaluation_commands_name_the_eval_extra_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import dynasor_graph.cli as cli

    monkeypatch.setattr(cli, "EVAL_MODULES", ("tqdm", "no_such_module_for_this_test"))
    assert main(["replay", "--traces", str(tmp_path / "t.jsonl"), "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "dynasor-graph: replay needs the eval extra (no_such_module_for_this_test not "
        "installed): pip install 'dynasor-graph[eval]'\n")
