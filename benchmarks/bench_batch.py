"""Batch files for 10,000 decisions: requests per second of building and of parsing them.

Nothing is sent: the decisions are built directly from the types (tests/llm/fixtures.py), the
policy points at an unreachable local URL, and the output file is written here in OpenAI's
batch output format (what the provider or `vllm run-batch` returns). Prints, per stage:
(1) collect: render every prompt, cache keys, and the request body of each uncached request
    (`LLMPolicy.batch_requests`, what the prefetch does before submitting);
(2) write: the JSONL lines and the split into files at OpenAI's limits (`batch_lines`,
    `split_batches`);
(3) parse: read the output file back into results (`parse_output`);
(4) store: parse each answer like a live one and put it into a fresh on-disk response cache
    (`LLMPolicy.load_batch_results`, what `harness batch import` and the prefetch do).
Figures only, nothing asserted. Run: .venv/bin/python benchmarks/bench_batch.py [--decisions N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.llm.fixtures (decisions built from the types)

from harness.llm.batch import BatchLimits, batch_lines, parse_output, split_batches  # noqa: E402
from harness.llm.cache import ResponseCache  # noqa: E402
from harness.policies.llm import LLMPolicy  # noqa: E402
from tests.llm.fixtures import decisions  # noqa: E402


def _answer(line: dict, i: int) -> bytes:
    names = line["body"]["response_format"]["json_schema"]["schema"]["properties"]
    options = names["instrument_name"]["anyOf"][0]["enum"]
    content = json.dumps(
        {
            "analysis": "benchmark",
            "action": "SELL_CALL",
            "instrument_name": options[i % len(options)],
            "rationale": "rich premium",
        }
    )
    body = {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "model": line["body"]["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280},
    }
    out = {
        "id": f"batch_req_{i}",
        "custom_id": line["custom_id"],
        "response": {"status_code": 200, "request_id": f"req_{i}", "body": body},
        "error": None,
    }
    return json.dumps(out).encode() + b"\n"


def main() -> None:
    """Print requests per second of each stage."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=10_000)
    args = parser.parse_args()
    items = decisions(args.decisions)
    n = len(items)
    with tempfile.TemporaryDirectory() as tmp, ResponseCache(Path(tmp) / "cache") as cache:
        policy = LLMPolicy(
            model="gpt-4o-mini",
            base_url="http://127.0.0.1:9/v1",
            api_key_env=None,
            cache=cache,
            execution="batch",
        )
        clock = Clock()
        requests = policy.batch_requests(items)
        collect = clock.lap()
        lines = batch_lines(requests)
        files = split_batches(requests, BatchLimits())
        write = clock.lap()
        size = sum(len(x) for x in lines)
        output = b"".join(_answer(json.loads(x), i) for i, x in enumerate(lines))
        clock.lap()
        results = parse_output(output)
        parse = clock.lap()
        loaded = policy.load_batch_results(items, results)
        store = clock.lap()
        policy.close()
    assert len(requests) == n and loaded.stored == n, (len(requests), loaded)

    def rate(lap: tuple[float, float]) -> str:
        wall, cpu = lap
        return (
            f"{n / wall:>8,.0f} requests/s wall ({wall:6.2f} s), {n / cpu:>8,.0f} requests/s "
            f"of CPU ({cpu:6.2f} s)"
        )

    def plus(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
        return (a[0] + b[0], a[1] + b[1])

    print(
        f"batch files for {n:,} decisions ({len(files)} file(s), {size / 1e6:.1f} MB of requests)"
    )
    print(f"  collect (render prompts, keys, bodies) {rate(collect)}")
    print(f"  write (JSONL lines + split)            {rate(write)}")
    print(f"  build total                            {rate(plus(collect, write))}")
    print(f"  parse output file                      {rate(parse)}")
    print(f"  store (parse answers, write cache)     {rate(store)}")
    print(f"  parse total                            {rate(plus(parse, store))}")
    print(f"  load average while measuring: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")


class Clock:
    """Wall and process CPU time between laps (CPU time is what a loaded machine distorts
    least)."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self._wall, cpu - self._cpu)
        self._wall, self._cpu = wall, cpu
        return out


if __name__ == "__main__":
    main()
