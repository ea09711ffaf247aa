"""A tool agent that stops once its answer has settled: calculator + document lookup.

Two real local tools: ``calculate``, a safe arithmetic evaluator (``ast``, a whitelist of
number / operator nodes, bounded sizes; never ``eval``), and ``lookup``, a word-overlap search
over the small document set in ``examples/docs/``. The agent is ``create_agent`` with
:class:`~dynasor_graph.agents.EarlyStopMiddleware`; :func:`build_graph` is the same loop built
by hand with ``early_stop_node`` / ``early_stop_condition`` next to ``ToolNode``.

    python examples/agent.py "How many lamps are in the Harbor Street warehouse?"
    python examples/agent.py QUESTION --dry-run       # never stop; measure what stopping saves
    python examples/agent.py QUESTION --tool-choice none   # servers without a tool-call parser

The model is the endpoint's (``$DYNASOR_API_BASE`` / ``$DYNASOR_MODEL``, else the embedded local
vLLM). Tool calling needs a vLLM started with ``--enable-auto-tool-choice --tool-call-parser``;
the embedded SmolLM2 server has neither (and 135M parameters are too few for tool calls), so
against it use ``--tool-choice none``: the model answers directly and the run still goes through
the middleware.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain.agents import create_agent
from langchain.agents.middleware.types import (
    AgentMiddleware,
    ModelCallResult,
    ModelRequest,
    ModelResponse,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, HumanMessage, SystemMessage
from langchain_core.tools import BaseTool, tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Checkpointer

from dynasor_graph import Endpoint
from dynasor_graph.agents import (
    AgentLoopState,
    EarlyStopConfig,
    EarlyStopMiddleware,
    early_stop_condition,
    early_stop_node,
)
from dynasor_graph.local import default_endpoint

DOCS_DIR = Path(__file__).parent / "docs"

SYSTEM_PROMPT = (
    "You answer questions with the tools: `lookup` finds facts in the local documents, "
    "`calculate` does arithmetic. Look facts up and calculate before answering; reply with the "
    "final answer alone."
)

ToolChoice = Literal["auto", "none"]

# --- calculate: arithmetic from a whitelist of AST nodes -------------------------------------

_MAX_EXPRESSION_CHARS = 200
_MAX_EXPONENT = 64
_MAX_MAGNITUDE = 10**100

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos,
                                                          ast.USub: operator.neg}


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; ``ValueError`` for anything else.

    Only numbers, ``+ - * / // % **`` and unary ``+ -`` are allowed (``^`` means ``**``, and
    ``,`` or ``_`` digit separators are dropped); exponents are at most 64 and every
    intermediate value at most 1e100 in size.
    """
    text = expression.strip().replace("^", "**")
    text = re.sub(r"(?<=\d)[,_](?=\d{3})", "", text)
    if not text or len(text) > _MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression must have 1 to {_MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from exc
    return _value(tree.body)


def _value(node: ast.expr) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ValueError(f"only numbers are allowed, not {node.value!r}")
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_value(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponents are limited to {_MAX_EXPONENT}")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError as exc:
            raise ValueError("division by zero") from exc
        except OverflowError as exc:
            raise ValueError("number too large") from exc
    raise ValueError(f"{type(node).__name__} is not allowed in arithmetic")


def _bounded(value: Any) -> int | float:
    if isinstance(value, complex):
        raise ValueError("complex results are not supported")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("number too large")
    if abs(value) > _MAX_MAGNITUDE:
        raise ValueError("number too large")
    return int(value) if isinstance(value, float) and value.is_integer() else value


@tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression such as `240 * 12` or `(18 * 35) / 2`."""
    try:
        return str(evaluate(expression))
    except ValueError as exc:
        return f"error: {exc}"


# --- lookup: the best-matching local document -----------------------------------------------

def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def search_docs(query: str, docs_dir: Path = DOCS_DIR) -> str:
    """The document sharing the most words with ``query`` (title and text), or a miss."""
    wanted = _words(query)
    best, best_score = "", 0
    for path in sorted(docs_dir.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        score = len(wanted & _words(text))
        if score > best_score:
            best, best_score = text.strip(), score
    return best or f"no document matches {query!r}"


@tool
def lookup(query: str) -> str:
    """Find the local document about a place or thing, e.g. `Harbor Street warehouse`."""
    return search_docs(query)


TOOLS: list[BaseTool] = [calculate, lookup]

# --- the agent -------------------------------------------------------------------------------


class ToolChoiceMiddleware(AgentMiddleware):
    """Sets ``tool_choice`` on every model call (``none`` for servers without a tool parser)."""

    def __init__(self, tool_choice: ToolChoice) -> None:
        super().__init__()
        self.tool_choice = tool_choice

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Any],
    ) -> ModelCallResult[Any]:
        response: ModelResponse[Any] = await handler(request.override(
            tool_choice=self.tool_choice))
        return response


def chat_model(endpoint: Endpoint, *, max_tokens: int = 256) -> BaseChatModel:
    """The agent's chat model: LiteLLM against the endpoint, greedy, a bounded reply."""
    from langchain_litellm import ChatLiteLLM

    return ChatLiteLLM(model=endpoint.model, api_base=endpoint.api_base,
                       api_key=endpoint.api_key.get_secret_value(), temperature=0.0,
                       max_tokens=max_tokens, request_timeout=endpoint.timeout_s, max_retries=0)


def build_agent(
    endpoint: Endpoint,
    settings: EarlyStopConfig | None = None,
    *,
    model: BaseChatModel | None = None,
    tools: Sequence[BaseTool] = TOOLS,
    tool_choice: ToolChoice = "auto",
    early_stop: bool = True,
    checkpointer: Checkpointer = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """``create_agent`` with the tools and early stop (``early_stop=False``: the plain agent)."""
    middleware: list[AgentMiddleware[Any, Any, Any]] = []
    if early_stop:
        middleware.append(EarlyStopMiddleware(endpoint, settings))
    if tool_choice != "auto":
        middleware.append(ToolChoiceMiddleware(tool_choice))
    return create_agent(model or chat_model(endpoint), list(tools), system_prompt=SYSTEM_PROMPT,
                        middleware=middleware, checkpointer=checkpointer, name="dynasor_agent")


def build_graph(
    endpoint: Endpoint,
    settings: EarlyStopConfig | None = None,
    *,
    model: BaseChatModel | None = None,
    tools: Sequence[BaseTool] = TOOLS,
) -> CompiledStateGraph[AgentLoopState, None, AgentLoopState, AgentLoopState]:
    """The same agent as a hand-built loop: agent → early_stop → tools → agent …"""
    bound = (model or chat_model(endpoint)).bind_tools(list(tools))

    async def agent(state: AgentLoopState) -> dict[str, list[AnyMessage]]:
        reply = await bound.ainvoke([SystemMessage(SYSTEM_PROMPT), *state["messages"]])
        return {"messages": [reply]}

    builder = StateGraph(AgentLoopState)
    builder.add_node("agent", agent)
    builder.add_node("early_stop", early_stop_node(endpoint, settings, tools=tools,
                                                   system_prompt=SYSTEM_PROMPT))
    builder.add_node("tools", ToolNode(list(tools)))
    builder.add_edge(START, "agent")
    builder.add_edge("agent", "early_stop")
    builder.add_conditional_edges("early_stop", early_stop_condition,
                                  {"continue": "tools", "exit": END})
    builder.add_edge("tools", "agent")
    return builder.compile(name="dynasor_agent_graph")


async def ask(question: str, endpoint: Endpoint, settings: EarlyStopConfig,
              tool_choice: ToolChoice) -> dict[str, Any]:
    """Run the agent on one question; return its answer and early-stop report."""
    agent = build_agent(endpoint, settings, tool_choice=tool_choice)
    result = await agent.ainvoke({"messages": [HumanMessage(question)]})
    return {"answer": result["messages"][-1].text, "early_stop": result.get("early_stop")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("question", nargs="?",
                        default="How many lamps are in the Harbor Street warehouse?")
    parser.add_argument("--dry-run", action="store_true",
                        help="never stop early; report what stopping would have saved")
    parser.add_argument("--tool-choice", choices=["auto", "none"], default="auto")
    parser.add_argument("--threshold", type=int, default=2)
    args = parser.parse_args(argv)
    settings = EarlyStopConfig(certainty_threshold=args.threshold, dry_run=args.dry_run)
    with default_endpoint() as endpoint:
        result = asyncio.run(ask(args.question, endpoint, settings, args.tool_choice))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
