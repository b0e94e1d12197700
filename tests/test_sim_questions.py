"""The simulator's question family: parsing, exact answers, and agreement with QWED's own checks."""

from __future__ import annotations

import gc
import os
import sys
import threading

os.environ.setdefault("QWED_QUIET", "1")

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwed_guard.sim import question_forms, sample_questions, solve
from qwed_guard.sim.questions import (
    QUESTION_FORMS,
    UNEXPRESSIBLE,
    classify_prompt,
    render,
    translate_logic,
    unevaluable_expression_for,
    wrong_answer_for,
    wrong_expression_for,
)

qwed_local = pytest.importorskip("qwed_sdk.qwed_local")
sympy = pytest.importorskip("sympy")


def qwed_eval(expression: str) -> Any:
    """Evaluate an expression exactly as QWEDLocal.verify_math does."""
    return qwed_local._safe_eval_sympy_expr(expression, {"sympy": sympy, "x": sympy.Symbol("x")})


def qwed_agrees(answer: str, expression: str) -> bool:
    return bool(qwed_local._math_answers_match(answer, qwed_eval(expression)))


EXPECTED: dict[str, str] = {
    "What is 2 + 2?": "4",
    "What is 5 * 5?": "25",
    "Calculate 12 / 4": "3",
    "Calculate 15% of $200": "30",
    "What is 20% of 50?": "10",
    "What percent of 80 is 20?": "25",
    "What is 80 increased by 25%?": "100",
    "What is the percentage change from 80 to 100?": "25",
    "What is the price after a 20% discount on $80?": "64",
    "How much do you save with a 20% discount on $80?": "16",
    "What is a 15% tip on $45.50?": "6.825",
    "What is the total with an 8% sales tax on $50?": "54",
    "Calculate 10% interest on $1000": "100",
    "What is the simple interest on $1000 at 5% for 3 years?": "150",
    "What is $1000 at 5% compounded annually for 3 years?": "1157.625",
    "How much interest does $1000 earn at 4% compounded quarterly for 2 years?": "82.86",
    "What is the monthly payment on a $200,000 loan at 6% for 30 years?": "1199.10",
}

VARIANTS: dict[str, str] = {
    "what's 2+2": "4",
    "2 plus 2": "4",
    "Compute (3 + 4) ** 2": "49",
    "What is 2^10?": "1024",
    "What is 7 x 6?": "42",
    "What is 7 × 6?": "42",
    "What is 9 ÷ 3?": "3",
    "What is 12 divided by 5?": "2.4",
    "What is 3 squared plus 4 squared?": "25",
    "What is 10 / 3?": "3.333333",
    "What is -7/2 + 1?": "-2.5",
    "What is 1,000 + 2,500?": "3500",
    "What is 0.1 + 0.2?": "0.3",
    "What is 2 ** 100?": "1267650600228229401496703205376",
    "What is 15 percent of 200?": "30",
    "What is 12.5% of $80?": "10",
    "20 is what percent of 80?": "25",
    "Decrease $120 by 15%": "102",
    "What is the percent decrease from 100 to 80?": "20",
    "What is the percentage change from 80 to 60?": "-25",
    "What is $80 with 20% off?": "64",
    "What is an 18% tip on a $60 bill?": "10.80",
    "What is the total with a 15% tip on $40?": "46",
    "What is the simple interest on $1000 at 5% for 6 months?": "25",
    "What is the total amount after 3 years of simple interest at 5% on $1000?": "1150",
    "What is $1,000 at 5% compounded semi-annually for 2 years?": "1103.81",
    "What will $1000 grow to at 6% compounded monthly for 18 months?": "1093.93",
    "What is $1000 at 5% compounded annually for 18 months?": "1000",  # not whole periods?
    "Calculate compound interest on $1000 at 5% for 3 years": "157.625",
    "What is $500 at 8% compounded 4 times a year for 1 year?": "541.22",
    "What is the monthly payment on a $300,000 mortgage at 0% for 25 years?": "1000",
}
# 18 months annually is 1.5 periods: outside the family, not a guess.
del VARIANTS["What is $1000 at 5% compounded annually for 18 months?"]

OUTSIDE = [
    "Who won the 1998 World Cup?",
    "What is 2 ** 100000?",
    "What is 1/0?",
    "What is x + 1?",
    "What is the integral of sin(x)?",
    "What is $1000 at 5% compounded annually for 18 months?",
    "",
    "What is " + "1 + " * 200 + "1?",
]


@pytest.mark.parametrize(("query", "answer"), [*EXPECTED.items(), *VARIANTS.items()])
def test_family_answers_and_qwed_agrees(query: str, answer: str) -> None:
    solution = solve(query)
    assert solution is not None, query
    assert solution.answer == answer
    value = qwed_eval(solution.expression)
    assert qwed_local._format_sympy_result(value) == solution.qwed_value
    assert qwed_agrees(solution.answer, solution.expression)


@pytest.mark.parametrize("query", OUTSIDE)
def test_outside_family_is_unsolved(query: str) -> None:
    assert solve(query) is None


def test_every_documented_form_solves_to_its_kind() -> None:
    assert {example for _, example, _ in QUESTION_FORMS} == set(EXPECTED)
    for kind, example, _ in QUESTION_FORMS:
        solution = solve(example)
        assert solution is not None and solution.kind == kind
    lines = question_forms()
    assert len(lines) == len(QUESTION_FORMS)
    assert all(line.split()[0] for line in lines)


@given(
    num=st.integers(-(10**12), 10**12),
    den=st.integers(1, 10**6),
    places=st.sampled_from([2, 6]),
)
def test_any_rendered_value_is_verified_by_qwed(num: int, den: int, places: int) -> None:
    value = Fraction(num, den)
    solution = render("q", "test", value, f"({num})/{den}", places)
    assert qwed_agrees(solution.answer, solution.expression)
    assert qwed_local._format_sympy_result(qwed_eval(solution.expression)) == solution.qwed_value


@pytest.mark.parametrize("query", list(EXPECTED))
def test_bad_replies_are_bad_in_the_intended_way(query: str) -> None:
    solution = solve(query)
    assert solution is not None
    for u in (0.0, 0.5, 0.99):
        assert not qwed_agrees(wrong_answer_for(query, u), solution.expression)
        assert not qwed_agrees(solution.answer, wrong_expression_for(query, u))
    with pytest.raises(qwed_local.InvalidExpressionSyntaxError):
        qwed_eval(unevaluable_expression_for(query))
    with pytest.raises(qwed_local.InvalidExpressionSyntaxError):
        qwed_eval(UNEXPRESSIBLE)


def test_classify_the_prompts_qwedlocal_really_sends() -> None:
    """Capture QWEDLocal's two prompts (no network) and check both are recognised."""
    client = qwed_local.QWEDLocal(base_url="http://127.0.0.1:9/v1", model="m", cache=False)
    sent: list[str] = []

    def fake_call(prompt: str, system: str | None = None) -> str:
        sent.append(prompt)
        return "4" if len(sent) == 1 else "sympy.simplify(2 + 2)"

    client._call_llm = fake_call
    assert client.verify_math("What is 2 + 2?").verified
    assert [classify_prompt(p) for p in sent] == [
        ("answer", "What is 2 + 2?"),
        ("expression", "What is 2 + 2?"),
    ]
    assert classify_prompt("hello there") == ("other", "hello there")


def test_multiline_query_survives_prompt_extraction() -> None:
    query = "A shop sells a $80 coat.\nWhat is the price after a 20% discount on $80?"
    prompt = (
        "Solve this math problem and respond ONLY with the numerical answer:\n\n"
        f"{query}\n\nAnswer (number only):"
    )
    assert classify_prompt(prompt) == ("answer", query)


def test_sample_questions_are_reproducible_mixed_and_correct() -> None:
    first = sample_questions(120, seed=5)
    assert first == sample_questions(120, seed=5)
    assert first != sample_questions(120, seed=6)
    assert len(first) == 120
    assert len({q.kind for q in first}) >= 8
    for q in first:
        solution = solve(q.text)
        assert solution is not None
        assert (solution.answer, solution.qwed_value) == (q.answer, q.value)
    assert sample_questions(0) == []
    with pytest.raises(ValueError, match="n must be"):
        sample_questions(-1)


class _CyclicFinalizer:
    """Garbage whose collection runs Python code, so a thread switch can land mid-parse."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        sum(range(20))


def test_parsing_is_safe_across_threads() -> None:
    # CPython before 3.11.8 shares one AST depth counter between threads (cpython#106905):
    # a collection inside one parse lets another thread's parse corrupt it, and the first
    # raises SystemError. The simulator answers from many threads, so this must not happen.
    questions = [q.text for q in sample_questions(40, seed=3)]
    expected = [solve(text) for text in questions]
    logic = "Find x, y such that x > 2 and y < x and x + y == 7 and (x < 9 or y > 1)"
    expected_logic = translate_logic(logic)
    errors: list[BaseException] = []
    wrong: list[str] = []

    def work() -> None:
        try:
            for _ in range(15):
                for text, want in zip(questions, expected, strict=True):
                    _CyclicFinalizer()
                    if solve(text) != want:
                        wrong.append(text)
                if translate_logic(logic) != expected_logic:
                    wrong.append(logic)
        except BaseException as exc:  # any escape is the failure under test
            errors.append(exc)

    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)
    gc.set_threshold(50, 1, 1)
    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*thresholds)
    assert errors == []
    assert wrong == []
