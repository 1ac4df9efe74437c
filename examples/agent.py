"""An offline tool-calling agent as a durable code-first workflow.

A scripted "LLM" looks at what the tools returned so far and decides the next
call: a search, then a fan-out that reads every page the search found
(``ctx.map``), then an answer. The run then waits for a human's approval
(``ctx.wait_for("approval")``, holding no thread while it waits) and streams
the final answer token by token (``ctx.emit`` from a step). Every call is
checkpointed: kill the process at any point and the next start replays the
finished calls and continues.

Run it:

    python examples/agent.py               # approves itself from a second thread
    zixir run examples/agent.py:agent      # parks waiting for approval; then
    zixir runs send RUN_ID approval --data '{"approved": true}'

State lives in ``$ZIXIR_DATA_DIR`` (default ``./.zixir``).
"""

from __future__ import annotations

import threading
from typing import Any

import zixir_actors
from zixir_actors import durable, send

QUESTION = "Which supervision strategy restarts a crashed child and only the later siblings?"
APPROVAL_TIMEOUT = 7 * 24 * 3600.0
"""Seconds the agent waits for a human before giving up (a durable timer)."""

PAGES = {
    "one_for_one": "one_for_one: when a child crashes, only that child is restarted.",
    "one_for_all": "one_for_all: when a child crashes, every child is stopped and restarted.",
    "rest_for_one": "rest_for_one: when a child crashes, it and the children started after "
                    "it are restarted; earlier siblings keep running.",
    "intensity": "Restart intensity: more than max_restarts within max_seconds stops the "
                 "supervisor, which its own supervisor sees as a crash.",
}


# -- tools: plain functions, each call a durable step ----------------------------------


def search(query: str) -> list[str]:
    """Ids of the pages that mention any word of `query`."""
    words = query.lower().split()
    return sorted(pid for pid, text in PAGES.items() if any(w in text.lower() for w in words))


def read_page(page_id: str) -> dict[str, str]:
    return {"id": page_id, "text": PAGES[page_id]}


# -- the "LLM": scripted, offline, deterministic ------------------------------------------


class FakeLLM:
    """Answers like a tool-calling chat model would, from a script instead of a network."""

    def next_action(self, question: str, observations: list[dict[str, Any]]) -> dict[str, Any]:
        """The next tool call, given what the tools returned so far."""
        if not observations:
            return {"tool": "search", "args": "crashes"}
        last = observations[-1]
        if last["tool"] == "search":
            # the search returned a list of pages: read them all, in parallel
            return {"tool": "read_page", "args": last["result"]}
        pages = last["result"]
        fitting = [p["id"] for p in pages if "earlier siblings keep running" in p["text"]]
        if fitting:
            return {"tool": "answer", "args": fitting}
        return {"tool": "search", "args": "siblings"}

    def stream(self, question: str, sources: list[str]) -> list[str]:
        """The final answer, as the tokens a streaming API would send."""
        text = (f"Use {sources[0]}: when a child crashes, the supervisor restarts it and "
                "the children started after it, while earlier siblings keep running.")
        return [word + " " for word in text.split()]


LLM = FakeLLM()


def decide(question: str, observations: list[dict[str, Any]]) -> dict[str, Any]:
    return LLM.next_action(question, observations)


def compose(question: str, sources: list[str], ctx: Any) -> str:
    """Stream the answer: each token is emitted as it comes; the whole text is checkpointed."""
    tokens = []
    for token in LLM.stream(question, sources):
        ctx.emit(token)
        tokens.append(token)
    return "".join(tokens).strip()


# -- the agent -------------------------------------------------------------------------------


@durable("agent", max_concurrency=4)
def agent(ctx: Any, question: str = QUESTION, max_turns: int = 6) -> dict[str, Any]:
    observations: list[dict[str, Any]] = []
    sources: list[str] = []
    for _ in range(max_turns):
        action = ctx.step(decide, question, observations, name="llm")
        ctx.emit(f"llm: {action['tool']}({action['args']!r})")
        if action["tool"] == "answer":
            sources = action["args"]
            break
        if action["tool"] == "read_page":
            result: Any = ctx.map(read_page, action["args"], concurrency=4)
            ctx.emit(f"read {len(result)} pages in parallel")
        else:
            result = ctx.step(search, action["args"])
            ctx.emit(f"search found {result}")
        observations.append({"tool": action["tool"], "result": result})
    if not sources:
        return {"answer": None, "approved": False, "reason": "no answer found"}
    ctx.emit("waiting for approval")
    approval = ctx.wait_for("approval", timeout=APPROVAL_TIMEOUT)
    if not (isinstance(approval, dict) and approval.get("approved")):
        return {"answer": None, "approved": False, "reason": "rejected"}
    answer = ctx.step(compose, question, sources)
    return {"answer": answer, "approved": True, "sources": sources}


def approve_when_asked(handle: Any) -> None:
    """The human in the loop, played by a thread: approve once the agent asks."""
    for item in handle.progress(timeout=120):
        if item.kind == "parked" and item.value.get("event") == "approval":
            print(f"[human] approving run {handle.run_id}")
            send(handle.run_id, "approval", {"approved": True})
            return


def main() -> None:
    with zixir_actors.start():
        handle = agent.start({"question": QUESTION})
        approver = threading.Thread(target=approve_when_asked, args=(handle,), name="approver")
        approver.start()
        streaming = False
        for item in handle.progress(timeout=120):
            if item.kind == "emit" and item.step is not None:  # a token from compose
                if not streaming:
                    print("[answer] ", end="")
                    streaming = True
                print(item.value, end="", flush=True)
            elif item.kind == "emit":
                print(f"[agent] {item.value}")
        print()
        approver.join()
        result = handle.result(timeout=60).raise_for_status()
        assert result.output["approved"] and result.output["sources"] == ["rest_for_one"]
        print(f"run {result.run_id}: {result.status}; sources {result.output['sources']}")


if __name__ == "__main__":
    main()
