"""The reasoning log: a program's generated ids, text and probes, written one piece at a time.

A chain of thought grows by a chunk and a probe every round. Kept as state fields
(``token_ids``, ``reasoning``, ``probes``), every superstep stores the whole history again, so
a checkpointer writes bytes quadratic in the reasoning's length (228 MB for one 32K-token
program with ``AsyncSqliteSaver``). When the graph has a LangGraph store (``compile(store=)``,
``create_cot(..., store=)``; ``langgraph dev`` and the LangGraph server give every graph one),
the program keeps them in the store instead:

- each chunk and each probe is ONE store item under the namespace
  ``("dynasor_graph", "log", <program key>)``, holding its parent item's key: a linked list whose
  head is the only thing the state keeps (:class:`LogRef`, a few counters), so a superstep
  writes what it adds and nothing else; a fork of the thread (time travel, a retried node) keeps
  its own head, and the chain from it is its own history;
- the process keeps each live program's log in memory (:class:`Log`, an LRU of
  :data:`CACHED_LOGS` programs) keyed by its head, appending in place, so a round copies
  nothing; a log that is not there (another process resumed the thread, an evicted program, a
  retry) is rebuilt from the store with one search of its namespace.

Without a store the log is the state itself, as before: durable through any checkpointer,
quadratic in bytes. :func:`read_log` and :func:`add_chunk` / :func:`add_probe` hide which.
"""

from __future__ import annotations

import itertools
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast

from langgraph.config import get_store
from langgraph.store.base import BaseStore

from ._state import Probe

CACHED_LOGS = 128
"""Programs whose log this process keeps in memory (least recently used evicted): about
1.3 MB each at 32K reasoning tokens. An evicted log is rebuilt from the store when needed."""

NAMESPACE = ("dynasor_graph", "log")


class LogRef(TypedDict):
    """Where a program's log is (store mode): its key, its last item, and what it holds."""

    key: str
    head: str | None
    tokens: int
    chars: int
    probes: int


@dataclass
class Log:
    """A program's reasoning so far: the ids and text it generated, and its probes."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    probes: list[Probe] = field(default_factory=list)


_CACHE: OrderedDict[str, Log] = OrderedDict()


def _store() -> BaseStore | None:
    try:
        return get_store()
    except RuntimeError:  # outside a graph run
        return None


def _required_store() -> BaseStore:
    """The running graph's store, which a program whose state holds a :class:`LogRef` needs."""
    store = _store()
    if store is None:
        raise RuntimeError("this program keeps its reasoning in a LangGraph store, and the "
                           "graph running it has none: compile it with the same store")
    return store


def _namespace(key: str) -> tuple[str, ...]:
    return (*NAMESPACE, key)


def logged(state: Mapping[str, Any]) -> bool:
    """True when the program keeps its log in the store (its state holds a :class:`LogRef`)."""
    return state.get("log") is not None


def generated_count(state: Mapping[str, Any]) -> int:
    """How many tokens the program generated so far (whichever way its log is kept)."""
    ref = state.get("log")
    return int(ref["tokens"]) if ref is not None else len(state.get("token_ids", ()))


async def read_log(state: Mapping[str, Any]) -> Log:
    """The program's log. Without a store: views of the state's own fields (never mutate
    them). With one: the cached log at the state's head, else rebuilt from the store."""
    ref = cast(LogRef | None, state.get("log"))
    if ref is None:
        return Log(ids=state.get("token_ids", []), text=state.get("reasoning", ""),
                   probes=state.get("probes", []))
    if ref["head"] is None:
        return Log()
    log = _CACHE.get(ref["head"])
    if log is not None:
        _CACHE.move_to_end(ref["head"])
        return log
    log = await _rebuild(ref)
    _remember(ref["head"], log)
    return log


async def add_chunk(state: Mapping[str, Any], log: Log, ids: Sequence[int],
                    text: str, key: str) -> tuple[dict[str, Any], Log]:
    """Append a chunk: the state update that records it, and the log with it. A program
    without a log yet keeps it in the store when the graph has one (``key``: the program's
    key), else in the state."""
    store = _store()
    ref = cast(LogRef | None, state.get("log"))
    if ref is None and (store is None or state.get("token_ids") or state.get("probes")):
        grown = Log(ids=[*log.ids, *ids], text=log.text + text, probes=log.probes)
        return {"token_ids": grown.ids, "reasoning": grown.text}, grown
    store = store or _required_store()
    if ref is None:  # the first chunk: a log of its own (``log`` views the empty state)
        ref, log = LogRef(key=key, head=None, tokens=0, chars=0, probes=0), Log()
    head = await _put(store, ref, {"ids": list(ids), "text": text})
    log.ids.extend(ids)
    log.text += text
    _move(ref["head"], head, log)
    return {"chunk": text,  # what a viewer of the state (Studio) sees the reasoning grow by
            "log": LogRef(key=ref["key"], head=head, tokens=ref["tokens"] + len(ids),
                          chars=ref["chars"] + len(text), probes=ref["probes"])}, log


async def add_probe(state: Mapping[str, Any], log: Log, probe: Probe,
                    window: int) -> dict[str, Any]:
    """Append a probe; the state update that records it. In store mode the state's
    ``probes`` holds only the last ``window`` (what the Certaindex reads, for a viewer);
    :func:`final_probes` gives them all."""
    ref = cast(LogRef | None, state.get("log"))
    if ref is None:
        return {"probes": [*log.probes, probe]}
    head = await _put(_required_store(), ref, {"probe": dict(probe)})
    log.probes.append(probe)
    _move(ref["head"], head, log)
    return {"probes": log.probes[-window:],
            "log": LogRef(key=ref["key"], head=head, tokens=ref["tokens"],
                          chars=ref["chars"], probes=ref["probes"] + 1)}


def forget_log(state: Mapping[str, Any]) -> None:
    """The program finished: drop its log from this process's memory (the store keeps it)."""
    ref = cast(LogRef | None, state.get("log"))
    if ref is not None and ref["head"] is not None:
        _CACHE.pop(ref["head"], None)


_KEYS = itertools.count()
_PROCESS = uuid.uuid4().hex[:16]  # item keys: this process's random prefix and a counter


async def _put(store: BaseStore, ref: LogRef, value: dict[str, Any]) -> str:
    head = f"{_PROCESS}-{next(_KEYS):x}"
    await store.aput(_namespace(ref["key"]), head, {"parent": ref["head"], **value},
                     index=False)
    return head


def _move(old: str | None, new: str, log: Log) -> None:
    if old is not None:
        _CACHE.pop(old, None)
    _remember(new, log)


def _remember(head: str, log: Log) -> None:
    _CACHE[head] = log
    _CACHE.move_to_end(head)
    while len(_CACHE) > CACHED_LOGS:
        _CACHE.popitem(last=False)


async def _rebuild(ref: LogRef) -> Log:
    """Walk the chain from the state's head back to its first item (one search of the
    program's namespace), and check it holds what the state says."""
    store = _required_store()
    namespace, offset = _namespace(ref["key"]), 0
    items: dict[str, dict[str, Any]] = {}
    while True:
        page = await store.asearch(namespace, limit=1000, offset=offset)
        items.update((item.key, item.value) for item in page)
        if len(page) < 1000:
            break
        offset += len(page)
    chain: list[dict[str, Any]] = []
    head: str | None = ref["head"]
    while head is not None:
        if head not in items:
            raise RuntimeError(f"the reasoning log of program {ref['key']!r} is missing item "
                               f"{head!r} in the store: was the store changed or cleared?")
        chain.append(items[head])
        head = items[head].get("parent")
    log = Log()
    for value in reversed(chain):
        if "probe" in value:
            log.probes.append(cast(Probe, value["probe"]))
        else:
            log.ids.extend(int(i) for i in value["ids"])
            log.text += str(value["text"])
    if (len(log.ids), len(log.text), len(log.probes)) != (ref["tokens"], ref["chars"],
                                                          ref["probes"]):
        raise RuntimeError(f"the reasoning log of program {ref['key']!r} in the store does "
                           "not match its state")
    return log
