"""An OpenAI-compatible LLM simulator with fault injection, on 127.0.0.1.

It answers the two prompts `QWEDLocal.verify_math` sends (the number, then SymPy code that QWED
evaluates to the same number), so verification really runs in QWED's engine, and it fails on
purpose the ways real providers fail: 5xx, 429 with Retry-After, 429 insufficient_quota, 401,
latency, hangs, wrong answers, unevaluable code, malformed JSON and outage windows.

    with SimulatedLLM(profile="flaky", seed=7) as llm:
        client = QWEDLocal(base_url=llm.base_url, model=llm.model, cache=False, max_retries=0)
        client.verify_math("What is 15% of 200?")
        llm.stats()

The question family it understands is documented in `qwed_guard.sim.questions`.
"""

from __future__ import annotations

from qwed_guard.sim.faults import PROFILES, FaultConfig, Reply
from qwed_guard.sim.questions import (
    SampleQuestion,
    Solution,
    question_forms,
    sample_questions,
    solve,
)
from qwed_guard.sim.server import DEFAULT_MODEL, SimulatedLLM, parse_sim_options, run_sim_cli

__all__ = [
    "DEFAULT_MODEL",
    "PROFILES",
    "FaultConfig",
    "Reply",
    "SampleQuestion",
    "SimulatedLLM",
    "Solution",
    "parse_sim_options",
    "question_forms",
    "run_sim_cli",
    "sample_questions",
    "solve",
]
