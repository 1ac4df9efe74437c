"""An offline AI pipeline: ingest -> chunk -> embed (stub model, cached) -> summarize
(a fake streaming LLM), as a checkpointed workflow under the zixir runtime.

Run it with ``python examples/ai_pipeline.py``; run it twice and the second
run's embeddings come from the persistent cache. State lives in
``$ZIXIR_DATA_DIR`` (default ``./.zixir``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator

import zixir_actors
from zixir_actors import Cache, Limits, RetryPolicy, Stream, Workflow, span

DOCUMENTS = {
    "otp.txt": "Erlang/OTP supervisors restart crashed processes. Restart intensity stops "
               "crash loops. Supervision trees nest to any depth.",
    "lmdb.txt": "LMDB is a memory-mapped key-value store. Readers never block writers. "
                "Transactions are ACID and crash-safe.",
    "llm.txt": "Large language models stream tokens. Slow consumers need backpressure. "
               "Caching saves repeated calls.",
}


class StubEmbedder:
    """A deterministic 8-dimensional 'model': offline, and slow enough to be worth caching."""

    dims = 8

    def embed(self, text: str) -> list[float]:
        time.sleep(0.005)
        digest = hashlib.sha256(text.encode()).digest()
        raw = [b / 255 - 0.5 for b in digest[: self.dims]]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        return [round(x / norm, 4) for x in raw]


def fake_llm_stream(prompt: str, *, max_tokens: int = 40) -> Iterator[str]:
    """Tokens as an LLM client would stream them."""
    words = prompt.split()
    for i in range(min(max_tokens, len(words))):
        yield words[i] + " "


def build(cache: zixir_actors.Cache) -> Workflow:
    wf = Workflow("ai-pipeline", max_concurrency=4)
    model = StubEmbedder()

    @wf.step()
    def ingest(documents: dict[str, str]) -> dict[str, str]:
        return {name: " ".join(text.split()) for name, text in documents.items()}

    @wf.step(depends_on=["ingest"])
    def chunk(ingest: dict[str, str]) -> list[tuple[str, str]]:
        return [(name, sentence.strip() + ".") for name, text in sorted(ingest.items())
                for sentence in text.split(".") if sentence.strip()]

    @wf.step(depends_on=["chunk"], retry=RetryPolicy(max_attempts=3, initial_delay=0.05),
             timeout=60.0)
    def embed(chunk: list[tuple[str, str]]) -> list[list[float]]:
        # Embeddings are cached by text: a second run makes no model calls.
        return Stream.from_iterable(chunk).map(
            lambda item: cache.get_or_compute(item[1], lambda: model.embed(item[1])),
            concurrency=4, ordered=True).to_list()

    @wf.step(depends_on=["chunk"], limits=Limits(timeout=30.0, memory="512MB"))
    def keywords(chunk: list[tuple[str, str]]) -> list[str]:
        # Third-party parsing code runs in a sandbox process with limits.
        words = [w.strip(".,").lower() for _, text in chunk for w in text.split()]
        return sorted({w for w in words if len(w) > 7})[:10]

    @wf.step(depends_on=["chunk", "embed", "keywords"])
    def summarize(chunk: list[tuple[str, str]], embed: list[list[float]],
                  keywords: list[str]) -> str:
        prompt = "Summary: " + " ".join(text for _, text in chunk[:3])
        tokens = Stream.from_iterator(fake_llm_stream(prompt)).batch(5, timeout=0.1)
        return "".join("".join(b) for b in tokens).strip() + f" [{', '.join(keywords[:3])}]"

    return wf


def main() -> None:
    with zixir_actors.start() as runtime:
        cache = Cache.start("embeddings", ttl=24 * 3600, persist=True)
        with span("example.ai_pipeline"):
            result = build(cache).run({"documents": DOCUMENTS}, timeout=120)
        result.raise_for_status()
        stats = cache.stats()
        print(result.outputs["summarize"])
        print(f"{len(result.outputs['embed'])} chunks embedded; cache hits {stats.hits}, "
              f"misses {stats.misses}; state in {runtime.data_dir}")
        cache.stop()


if __name__ == "__main__":
    main()
