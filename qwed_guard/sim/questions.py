"""The questions the simulator understands, and the two replies QWED needs for each.

`QWEDLocal.verify_math(query)` sends two prompts: one asking for the numerical answer, one asking
for "the Python SymPy code to evaluate this". For every question in the family below the
simulator answers the number, then a SymPy expression that QWED's safe evaluator accepts and that
evaluates *exactly* to that number, so the check really runs in QWED's SymPy engine and reports
``verified=True``. Arithmetic here uses `fractions.Fraction` (exact, and no SymPy import in the
server); integer literals in the expression become SymPy Integers inside QWED, so ``5/100`` is an
exact Rational there too.

The family (matching is case-insensitive; ``$`` signs, thousands commas, "percent" for ``%``,
and a trailing "?" are all accepted):

* **arithmetic** - ``+ - * / ** ^ ( )``, ``x``/``×``/``÷`` and words ("plus", "minus", "times",
  "multiplied by", "divided by", "to the power of", "squared", "cubed"), integer exponents only:
  "What is 2 + 2?", "What is 5 * 5?", "Calculate 12 / 4", "Compute (3 + 4) ** 2".
* **percent of** - "Calculate 15% of $200", "What is 20% of 50?"; and the inverse forms
  "What percent of 80 is 20?", "20 is what percent of 80?".
* **percent applied** - "What is 80 increased by 25%?", "Decrease $120 by 15%".
* **percentage change** - "What is the percentage change from 80 to 100?" (signed);
  "percent increase/decrease from X to Y" (as a positive increase/decrease).
* **discount** - "What is the price after a 20% discount on $80?", "$80 with 20% off" -> the
  price paid; "How much do you save with a 20% discount on $80?" -> the saving.
* **tip / tax** - "What is a 15% tip on $45.50?" -> the tip; "total with an 8% sales tax on $50"
  -> bill plus tip/tax ("total", "including", "after", "altogether", "in all").
* **simple interest** - "Calculate 10% interest on $1000" (one year unless a term is given),
  "simple interest on $1000 at 5% for 3 years", terms in years, months or days (365-day year)
  -> the interest; with "total"/"amount"/"balance"/"worth" -> principal plus interest.
* **compound interest** - "$1000 at 5% compounded annually for 3 years" -> the **final amount**
  (principal plus interest), compounding annually (default), semi-annually, quarterly, monthly,
  weekly, daily or "N times a year". When the question asks for the interest itself
  ("compound interest on ...", "how much interest ...", "interest earned") and not for an
  amount/total/balance/worth, it answers the interest (amount minus principal).
* **loan payment** - "What is the monthly payment on a $200,000 loan at 6% for 30 years?":
  the standard annuity payment ``P*r/(1-(1+r)**-n)`` with monthly rate ``r`` and ``n`` months,
  rounded to the cent.

Answers are exact: a value with a short terminating decimal (up to 3 places for money, 7 for
plain numbers) is answered exactly ("1157.625" for the compound example, where QWED reports the
value as the Rational "9261/8"); any other value is rounded half-up (to the cent for money, to 6
places for plain numbers) and the expression does the same rounding with ``int(...)``, so the two
still agree. A question outside the family gets
a plausible number and an explanation in prose instead of code, which QWED cannot evaluate:
``error="SymPy verification failed: invalid syntax ..."`` - unverifiable, never a crash.
"""

from __future__ import annotations

import ast
import json
import keyword
import random
import re
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Literal

PromptKind = Literal["answer", "expression", "translation", "logic", "other"]

ANSWER_PROMPT_MARKER: Final = "respond ONLY with the numerical answer"
EXPRESSION_PROMPT_MARKER: Final = "Convert this to a SymPy expression"

_ANSWER_RE = re.compile(
    r"respond\s+only\s+with\s+the\s+numerical\s+answer\s*:?\s*(?P<q>.*?)\s*"
    r"(?:answer\s*\(number\s+only\)\s*:?\s*)?$",
    re.IGNORECASE | re.DOTALL,
)
_EXPRESSION_RE = re.compile(
    r"convert\s+this\s+to\s+a\s+sympy\s+expression[^:\n]*:?\s*(?P<q>.*?)\s*"
    r"(?:respond\s+with\s+only\s+the\s+python\s+sympy\s+code.*)?$",
    re.IGNORECASE | re.DOTALL,
)

#: How the system prompts of QWED's API server (its OpenAI-compatible provider) begin: the math
#: translation (JSON with expression and claimed_answer) and the Z3 logic translation / its
#: refinement (JSON with variables and constraints).
TRANSLATION_SYSTEM_MARKER: Final = "You are a mathematical expression translator"
LOGIC_SYSTEM_MARKER: Final = "You are a Logic Translator"

#: What the simulated LLM says when asked for code it cannot write: prose, so QWED's parser fails.
UNEXPRESSIBLE: Final = "Sorry, this question cannot be expressed as a single SymPy expression."

_MAX_QUERY_CHARS: Final = 500
_MAX_PERIODS: Final = 1200
_MAX_POWER_BITS: Final = 4096
_MAX_SIGNIFICANT: Final = 15


@dataclass(frozen=True, slots=True)
class Solution:
    """One question solved: what the LLM answers, the SymPy code it gives, what QWED reports.

    `value` is the exact number both replies stand for; `qwed_value` is how QWED formats the
    evaluated expression (`str` of a SymPy Rational: "30", "9261/8").
    """

    query: str
    kind: str
    value: Fraction
    answer: str
    expression: str
    #: The unrounded value and its plain expression (no ``sympy.`` call, no rounding): what
    #: the simulator puts in the API server's JSON translation.
    exact_value: Fraction | None = None
    exact_expression: str = ""

    @property
    def qwed_value(self) -> str:
        return str(self.value)


@dataclass(frozen=True, slots=True)
class SampleQuestion:
    """A generated question with its known correct replies, for the demo and tests."""

    text: str
    kind: str
    answer: str
    value: str


# --------------------------------------------------------------------------------------------
# Prompt recognition


def classify_prompt(prompt: str, system: str = "") -> tuple[PromptKind, str]:
    """Which prompt this is, and the user's query inside it.

    QWEDLocal.verify_math's two prompts are "answer" and "expression" (recognised in the user
    message). QWED's API server puts its instructions in the `system` message and the query,
    unchanged, in the user message: "translation" (natural-language math to JSON) and "logic"
    (the Z3 translation and its refinement). Anything else is "other" with the whole text as the
    query.
    """
    system_text = " ".join(system.split()).lower()
    if TRANSLATION_SYSTEM_MARKER.lower() in system_text:
        return "translation", prompt.strip()
    if LOGIC_SYSTEM_MARKER.lower() in system_text:
        return "logic", prompt.strip()
    text = prompt.strip()
    lowered = text.lower()
    if ANSWER_PROMPT_MARKER.lower() in " ".join(lowered.split()):
        match = _ANSWER_RE.search(text)
        if match:
            return "answer", match.group("q").strip()
    if EXPRESSION_PROMPT_MARKER.lower() in " ".join(lowered.split()):
        match = _EXPRESSION_RE.search(text)
        if match:
            return "expression", match.group("q").strip()
    return "other", text


# --------------------------------------------------------------------------------------------
# Numbers and formatting


def _terminates(value: Fraction) -> bool:
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def _decimal_places(value: Fraction) -> int:
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    return max(twos, fives)


def format_decimal(value: Fraction, min_places: int = 0) -> str:
    """A terminating Fraction as a plain decimal string, with at least `min_places` places."""
    places = max(_decimal_places(value), min_places if value.denominator != 1 else 0)
    sign = "-" if value < 0 else ""
    scaled = abs(value) * 10**places
    digits = str(scaled.numerator // scaled.denominator)
    if places == 0:
        return sign + digits
    digits = digits.rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _significant(text: str) -> int:
    return len(text.lstrip("-").replace(".", "").lstrip("0")) or 1


def round_half_up(value: Fraction, places: int) -> Fraction:
    """Round half away from zero to `places` decimals, as the `int(...)` expression does."""
    scale = 10**places
    magnitude = Fraction(int(abs(value) * scale + Fraction(1, 2)), scale)
    return magnitude if value >= 0 else -magnitude


def render(query: str, kind: str, value: Fraction, exact_expr: str, places: int) -> Solution:
    """Turn an exact value and its expression into the two replies QWED will compare.

    Exact decimals are answered as they are; anything else is rounded in both the answer and the
    expression, and a value too long for QWED's float comparison is answered as a fraction.
    """
    money = places == 2
    if value.denominator == 1:
        return Solution(
            query, kind, value, str(value), f"sympy.simplify({exact_expr})", value, exact_expr
        )
    if _terminates(value) and _decimal_places(value) <= places + 1:
        text = format_decimal(value, 2 if money else 0)
        if _significant(text) <= _MAX_SIGNIFICANT:
            return Solution(
                query, kind, value, text, f"sympy.simplify({exact_expr})", value, exact_expr
            )
    rounded = round_half_up(value, places)
    text = format_decimal(rounded, 2 if money and rounded.denominator != 1 else 0)
    if _significant(text) <= _MAX_SIGNIFICANT:
        scale = 10**places
        if value >= 0:
            expr = f"int({scale}*({exact_expr}) + 1/2)/{scale}"
        else:
            expr = f"-int({scale}*(-({exact_expr})) + 1/2)/{scale}"
        return Solution(query, kind, rounded, text, f"sympy.simplify({expr})", value, exact_expr)
    return Solution(
        query, kind, value, str(value), f"sympy.simplify({exact_expr})", value, exact_expr
    )


def _lit(value: Fraction) -> str:
    """An exact literal for a number inside an expression QWED evaluates."""
    if value.denominator == 1:
        return str(value.numerator) if value >= 0 else f"({value.numerator})"
    return f"({value.numerator}/{value.denominator})"


def _pct(value: Fraction) -> str:
    """A percentage as QWED-exact code: 5 -> "5/100", 2.5 -> "(5/2)/100"."""
    return f"{_lit(value)}/100"


# --------------------------------------------------------------------------------------------
# Slot extraction for the word problems

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_TOKEN_RE = re.compile(
    r"(?P<dollar>\$\s?)?(?P<num>" + _NUM + r")\s*-?\s*(?P<unit>%|percent\b|per\s?cent\b|pct\b|"
    r"years?\b|yrs?\b|months?\b|days?\b|times\b|k\b)?",
    re.IGNORECASE,
)


def _num(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


@dataclass(slots=True)
class _Slots:
    money: list[Fraction]
    pcts: list[Fraction]
    years: Fraction | None
    times: Fraction | None


def _slots(q: str) -> _Slots:
    money: list[Fraction] = []
    pcts: list[Fraction] = []
    years: Fraction | None = None
    times: Fraction | None = None
    for m in _TOKEN_RE.finditer(q):
        value = _num(m.group("num"))
        unit = (m.group("unit") or "").lower().replace(" ", "")
        if unit in {"%", "percent", "pct"}:
            pcts.append(value)
        elif unit.startswith(("year", "yr")):
            years = value
        elif unit.startswith("month"):
            years = value / 12
        elif unit.startswith("day"):
            years = value / 365
        elif unit == "times":
            times = value
        elif unit == "k":
            money.append(value * 1000)
        else:
            money.append(value)
    return _Slots(money, pcts, years, times)


def _has(q: str, pattern: str) -> bool:
    return re.search(pattern, q) is not None


_TOTAL = r"\b(total|final amount|amount|balance|worth|grow|future value|end up|altogether|in all)\b"

_FREQUENCY_RE = re.compile(
    r"(?P<f2>semi-?\s?annual\w*|half-?\s?year\w*|twice a year|bi-?annual\w*)|(?P<f4>quarter\w*)|"
    r"(?P<f12>month\w*)|(?P<f52>week\w*)|(?P<f365>daily|days?\b)|(?P<f1>annual\w*|yearly)"
)


def _frequency(q: str) -> int:
    """Compounding periods per year, from the words right after (or else before) "compound"."""
    before, _, after = q.partition("compound")
    for window in (" ".join(after.split()[:3]), " ".join(before.split()[-3:])):
        match = _FREQUENCY_RE.search(window)
        if match and match.lastgroup:
            return int(match.lastgroup[1:])
    return 1


def _loan(query: str, q: str) -> Solution | None:
    if not (_has(q, r"\b(loan|mortgage|borrow)") and _has(q, r"\b(monthly|payment|installment)")):
        return None
    s = _slots(q)
    if not s.money or len(s.pcts) != 1 or s.years is None:
        return None
    principal, rate, months = s.money[0], s.pcts[0], s.years * 12
    if months.denominator != 1 or not 0 < months <= _MAX_PERIODS or principal <= 0:
        return None
    n = int(months)
    r = rate / 100 / 12
    if r == 0:
        return render(query, "loan_payment", principal / n, f"{_lit(principal)}/{n}", 2)
    payment = principal * r / (1 - (1 + r) ** -n)
    r_expr = f"({_lit(rate)}/100/12)"
    expr = f"{_lit(principal)}*{r_expr}/(1 - (1 + {r_expr})**(-{n}))"
    return render(query, "loan_payment", payment, expr, 2)


def _compound(query: str, q: str) -> Solution | None:
    if not _has(q, r"\bcompound"):
        return None
    s = _slots(q)
    if not s.money or len(s.pcts) != 1:
        return None
    principal, rate = s.money[0], s.pcts[0]
    years = s.years if s.years is not None else Fraction(1)
    per_year = 1
    if s.times is not None and _has(q, r"times (a|per|each) year"):
        if s.times.denominator != 1:
            return None
        per_year = int(s.times)
    else:
        per_year = _frequency(q)
    periods = years * per_year
    if periods.denominator != 1 or not 0 < periods <= _MAX_PERIODS or per_year <= 0:
        return None
    n = int(periods)
    amount = principal * (1 + rate / 100 / per_year) ** n
    amount_expr = f"{_lit(principal)}*(1 + {_pct(rate)}/{per_year})**{n}"
    wants_interest = _has(
        q, r"compound interest (on|of|for|earned)|how much interest|interest earn"
    )
    if wants_interest and not _has(q, _TOTAL):
        return render(
            query, "compound_interest", amount - principal, f"{amount_expr} - {_lit(principal)}", 2
        )
    return render(query, "compound_amount", amount, amount_expr, 2)


def _simple_interest(query: str, q: str) -> Solution | None:
    if not _has(q, r"\binterest\b"):
        return None
    s = _slots(q)
    if not s.money or len(s.pcts) != 1:
        return None
    principal, rate = s.money[0], s.pcts[0]
    years = s.years if s.years is not None else Fraction(1)
    interest = principal * rate / 100 * years
    expr = f"{_lit(principal)}*{_pct(rate)}*{_lit(years)}"
    if _has(q, _TOTAL):
        return render(query, "simple_total", principal + interest, f"{_lit(principal)} + {expr}", 2)
    return render(query, "simple_interest", interest, expr, 2)


def _discount(query: str, q: str) -> Solution | None:
    if not (_has(q, r"\bdiscount") or _has(q, r"%\s*off\b|percent off\b")):
        return None
    s = _slots(q)
    if len(s.money) != 1 or len(s.pcts) != 1:
        return None
    price, pct = s.money[0], s.pcts[0]
    if _has(q, r"\bsave|saving|how much is the discount|discount amount|amount of the discount"):
        return render(query, "discount_saving", price * pct / 100, f"{_lit(price)}*{_pct(pct)}", 2)
    return render(
        query, "discount_price", price * (1 - pct / 100), f"{_lit(price)}*(1 - {_pct(pct)})", 2
    )


def _tip_tax(query: str, q: str) -> Solution | None:
    match = re.search(r"\b(tip|gratuity|tax|vat|service charge)\b", q)
    if not match:
        return None
    s = _slots(q)
    if len(s.money) != 1 or len(s.pcts) != 1:
        return None
    bill, pct = s.money[0], s.pcts[0]
    kind = "tip" if match.group(1) in {"tip", "gratuity", "service charge"} else "tax"
    if _has(q, r"\b(total|including|with|after|altogether|in all|pay)\b") and not _has(
        q, r"^(what|how much) is (the |a |an )?\S*\s*(tip|tax)\b"
    ):
        return render(
            query, f"{kind}_total", bill * (1 + pct / 100), f"{_lit(bill)}*(1 + {_pct(pct)})", 2
        )
    return render(query, kind, bill * pct / 100, f"{_lit(bill)}*{_pct(pct)}", 2)


def _percent_change(query: str, q: str) -> Solution | None:
    match = re.search(r"\bfrom\s+\$?(?P<a>" + _NUM + r")\s+to\s+\$?(?P<b>" + _NUM + r")", q)
    if not match or not _has(q, r"percent|%|change|increase|decrease|growth|grow|drop|fall"):
        return None
    a, b = _num(match.group("a")), _num(match.group("b"))
    if a == 0:
        return None
    if _has(q, r"decrease|drop|fall|decline") and not _has(q, r"change"):
        return render(
            query, "percent_change", (a - b) / a * 100, f"({_lit(a)} - {_lit(b)})/{_lit(a)}*100", 2
        )
    return render(
        query, "percent_change", (b - a) / a * 100, f"({_lit(b)} - {_lit(a)})/{_lit(a)}*100", 2
    )


def _percent_applied(query: str, q: str) -> Solution | None:
    up = r"increased|increase|raised|raise|marked up|mark up|grown|grow"
    down = r"decreased|decrease|reduced|reduce|marked down|mark down|lowered|lower|cut"
    match = re.search(
        r"\$?(?P<a>" + _NUM + r")\s+(?:is\s+)?(?P<dir>" + up + "|" + down + r")\s+by\s+"
        r"(?P<p>" + _NUM + r")\s*(?:%|percent)",
        q,
    ) or re.search(
        r"(?P<dir>" + up + "|" + down + r")\s+\$?(?P<a>" + _NUM + r")\s+by\s+"
        r"(?P<p>" + _NUM + r")\s*(?:%|percent)",
        q,
    )
    if not match:
        return None
    a, p = _num(match.group("a")), _num(match.group("p"))
    sign = "+" if re.fullmatch(up, match.group("dir")) else "-"
    factor = 1 + p / 100 if sign == "+" else 1 - p / 100
    return render(query, "percent_applied", a * factor, f"{_lit(a)}*(1 {sign} {_pct(p)})", 2)


def _percent_of(query: str, q: str) -> Solution | None:
    match = re.search(
        r"(?P<p>" + _NUM + r")\s*(?:%|percent\b|per\s?cent\b)\s+of\s+(?:a\s+|an\s+|the\s+)?\$?"
        r"(?P<x>" + _NUM + r")",
        q,
    )
    if match:
        p, x = _num(match.group("p")), _num(match.group("x"))
        return render(query, "percent_of", p * x / 100, f"{_pct(p)}*{_lit(x)}", 2)
    match = re.search(
        r"what\s+(?:percent|percentage)\s+of\s+\$?(?P<x>"
        + _NUM
        + r")\s+is\s+\$?(?P<y>"
        + _NUM
        + r")",
        q,
    ) or re.search(
        r"\$?(?P<y>"
        + _NUM
        + r")\s+is\s+what\s+(?:percent|percentage)\s+of\s+\$?(?P<x>"
        + _NUM
        + r")",
        q,
    )
    if match:
        x, y = _num(match.group("x")), _num(match.group("y"))
        if x == 0:
            return None
        return render(query, "percent_ratio", y / x * 100, f"{_lit(y)}/{_lit(x)}*100", 2)
    return None


# --------------------------------------------------------------------------------------------
# Arithmetic

_LEADING = re.compile(
    r"^(?:please\s+)?(?:what\s+is|what's|whats|calculate|compute|evaluate|solve|find|simplify|"
    r"how\s+much\s+is|work\s+out)\s+(?:the\s+value\s+of\s+|the\s+result\s+of\s+)?",
)
_WORDS: Final[tuple[tuple[str, str], ...]] = (
    (r"\bto the power of\b|\braised to(?: the power of)?\b", "**"),
    (r"\bmultiplied by\b|\btimes\b", "*"),
    (r"\bdivided by\b|\bover\b", "/"),
    (r"\bplus\b|\badded to\b", "+"),
    (r"\bminus\b", "-"),
    (r"\bsquared\b", "**2"),
    (r"\bcubed\b", "**3"),
)


def _arith_eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _arith_eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(repr(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _arith_eval(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _arith_eval(node.left), _arith_eval(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > 256:
                raise ValueError("only small integer exponents")
            bits = max(left.numerator.bit_length(), left.denominator.bit_length())
            if bits * abs(int(right)) > _MAX_POWER_BITS:
                raise ValueError("power too large")
            return left ** int(right)
    raise ValueError(f"unsupported: {type(node).__name__}")


def _arith_code(node: ast.AST) -> str:
    """Render the parsed arithmetic back as QWED-exact code (decimals become fractions)."""
    if isinstance(node, ast.Expression):
        return _arith_code(node.body)
    if isinstance(node, ast.Constant):
        return _lit(Fraction(repr(node.value)))
    if isinstance(node, ast.UnaryOp):
        inner = _arith_code(node.operand)
        return f"-({inner})" if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}[type(node.op)]
        return f"({_arith_code(node.left)} {op} {_arith_code(node.right)})"
    raise ValueError(f"unsupported: {type(node).__name__}")


# CPython before 3.11.8 (and 3.12.0-3.12.1) keeps one AST-building depth counter per
# interpreter; two threads parsing at once can raise "SystemError: AST constructor recursion
# depth mismatch" (python/cpython#106905). The simulator answers from many threads, so its
# parses take turns.
_PARSE_LOCK: Final = threading.Lock()


def _parse_expression(text: str) -> ast.Expression:
    with _PARSE_LOCK:
        return ast.parse(text, mode="eval")


def _arithmetic(query: str, q: str) -> Solution | None:
    text = _LEADING.sub("", q).strip().rstrip("?.!= ").strip()
    for pattern, repl in _WORDS:
        text = re.sub(pattern, f" {repl} ", text)
    text = text.replace("×", "*").replace("·", "*").replace("÷", "/").replace("^", "**")
    text = text.replace("−", "-").replace("$", "")
    text = re.sub(r"(?<=\d)\s*x\s*(?=[\d(])", "*", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    if not re.fullmatch(r"[\d\s+\-*/().]+", text) or not re.search(r"\d", text):
        return None
    try:
        tree = _parse_expression(text.strip())
        value = _arith_eval(tree)
        code = _arith_code(tree)
    except (SyntaxError, ValueError, ZeroDivisionError, KeyError, OverflowError):
        return None
    if code.startswith("(") and code.endswith(")") and isinstance(tree.body, ast.BinOp):
        code = code[1:-1]
    return render(query, "arithmetic", value, code, 6)


_SOLVERS: Final[tuple[Callable[[str, str], Solution | None], ...]] = (
    _loan,
    _compound,
    _simple_interest,
    _discount,
    _tip_tax,
    _percent_change,
    _percent_applied,
    _percent_of,
    _arithmetic,
)


def solve(query: str) -> Solution | None:
    """Solve a question from the family, or None when it is outside it."""
    if not query or len(query) > _MAX_QUERY_CHARS:
        return None
    q = " ".join(query.lower().split())
    q = q.replace("−", "-").replace("per cent", "percent")
    for solver in _SOLVERS:
        try:
            solution = solver(query, q)
        except (ValueError, ZeroDivisionError, OverflowError, ArithmeticError):
            solution = None
        if solution is not None:
            return solution
    return None


# --------------------------------------------------------------------------------------------
# Replies, including the deliberately bad ones


def plausible_answer(query: str) -> str:
    """A confident-looking number for a question the simulator cannot solve (stable per query)."""
    numbers = [_num(m) for m in re.findall(_NUM, query)]
    base = max(numbers) if numbers else Fraction(zlib.crc32(query.encode()) % 1000)
    return format_decimal(round_half_up(base * Fraction(3, 2) + 1, 2))


def answer_for(query: str) -> str:
    """The answer-prompt reply: the number, or a plausible one outside the family."""
    solution = solve(query)
    return solution.answer if solution else plausible_answer(query)


def expression_for(query: str) -> str:
    """The expression-prompt reply: exact SymPy code, or prose QWED cannot parse."""
    solution = solve(query)
    return solution.expression if solution else UNEXPRESSIBLE


def wrong_value(value: Fraction, u: float) -> Fraction:
    """A nearby but different number, chosen by `u` in [0, 1): what a sloppy LLM says."""
    k = 1 + int(u * 20)
    candidate = value + k if abs(value) < 20 else value * (1 + Fraction(k, 100)) + k
    candidate = round_half_up(candidate, 2)
    return candidate if candidate != value else value + 1


def wrong_answer_for(query: str, u: float) -> str:
    """An answer-prompt reply that QWED will refute (verified=False, error=None)."""
    solution = solve(query)
    if solution is None:
        return plausible_answer(query)
    return format_decimal(wrong_value(solution.value, u))


def wrong_expression_for(query: str, u: float) -> str:
    """An expression that evaluates, but to the wrong number (a scripted wrong on prompt two)."""
    solution = solve(query)
    if solution is None:
        return UNEXPRESSIBLE
    return f"sympy.simplify({_lit(wrong_value(solution.value, u))})"


def unevaluable_expression_for(query: str) -> str:
    """The right code wrapped in a Markdown fence, as chatty LLMs do: QWED's parser rejects it."""
    solution = solve(query)
    code = solution.expression if solution else "sympy.simplify(x)"
    return f"```python\n{code}\n```"


def unevaluable_answer_for(query: str) -> str:
    """An answer-prompt reply in prose instead of a bare number."""
    return f"The answer is {answer_for(query)}."


# --------------------------------------------------------------------------------------------
# QWED's API server: JSON translations


def _json_number(value: Fraction) -> str:
    """A JSON number for `value`: exact when it terminates, else to 12 places."""
    if _terminates(value) and _decimal_places(value) <= 12:
        return format_decimal(value)
    return format_decimal(round_half_up(value, 12))


def _truncated(document: str) -> str:
    """The first half of a JSON document, as a reply cut off mid-stream: not parseable JSON."""
    return document[: max(1, len(document) // 2)]


def translation_for(query: str) -> str:
    """The API server's math-translation reply: JSON QWED's engine evaluates and checks.

    ``expression`` is the solver's exact expression (plain SymPy syntax, no rounding) and
    ``claimed_answer`` its exact value (12 places when it does not terminate), so the server's
    check is VERIFIED. A question outside the family gets the "not a math question" translation
    (``expression`` "0", confidence 0.2), which the server answers as NOT_MATH_QUERY.
    """
    solution = solve(query)
    if solution is None or solution.exact_value is None:
        return json.dumps(
            {
                "expression": "0",
                "claimed_answer": 0,
                "reasoning": "This is not a math question this translator understands.",
                "confidence": 0.2,
            }
        )
    return _translation_json(solution, solution.exact_value)


def _translation_json(solution: Solution, claimed: Fraction) -> str:
    # Written by hand so claimed_answer is the exact decimal, not a float's repr.
    reasoning = solution.kind.replace("_", " ") + " for: " + solution.query
    return (
        f'{{"expression": {json.dumps(solution.exact_expression)}, '
        f'"claimed_answer": {_json_number(claimed)}, '
        f'"reasoning": {json.dumps(reasoning)}, "confidence": 0.95}}'
    )


def wrong_translation_for(query: str, u: float) -> str:
    """The right expression with a wrong ``claimed_answer``: the server proves it false."""
    solution = solve(query)
    if solution is None or solution.exact_value is None:
        return translation_for(query)
    return _translation_json(solution, wrong_value(solution.exact_value, u))


def unevaluable_translation_for(query: str) -> str:
    """A translation cut off mid-JSON: the server cannot parse it."""
    return _truncated(translation_for(query))


@dataclass(frozen=True, slots=True)
class LogicTranslation:
    """A logic query as the server's Z3 translator wants it: typed variables and constraints."""

    query: str
    variables: dict[str, str]
    constraints: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "variables": self.variables,
                "constraints": list(self.constraints),
                "goal": "SATISFIABILITY",
            }
        )


_LOGIC_PHRASES: Final[tuple[tuple[str, str], ...]] = (
    (r"\bis greater than or equal to\b|\bis at least\b|\bis no less than\b", " >= "),
    (r"\bis less than or equal to\b|\bis at most\b|\bis no more than\b", " <= "),
    (r"\bis greater than\b|\bis more than\b|\bis larger than\b|\bexceeds\b", " > "),
    (r"\bis less than\b|\bis smaller than\b|\bis below\b", " < "),
    (r"\bis not equal to\b|\bdoes not equal\b|\bis different from\b", " != "),
    (r"\bis equal to\b|\bequals\b", " == "),
    (r"\bplus\b", " + "),
    (r"\bminus\b", " - "),
    (r"\btimes\b|\bmultiplied by\b", " * "),
    ("≥", " >= "),
    ("≤", " <= "),
    ("≠", " != "),
    ("×", " * "),
    ("−", "-"),
)
_LOGIC_INTRO = re.compile(r"\b(?:such that|so that|where|with|satisfying)\b|:", re.IGNORECASE)
_LOGIC_LEAD = re.compile(
    r"^(?:(?:is it (?:possible|true|satisfiable)|can it be|check|verify|determine)"
    r"(?: (?:that|whether|if))?|can (?:we have )?|is|are|does|do|find|solve|satisfy)\s+",
    re.IGNORECASE,
)
_COMPARE_OPS: Final = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_ARITH_OPS: Final = (ast.Add, ast.Sub, ast.Mult)
_MAX_LOGIC_CONSTRAINTS: Final = 20


def _logic_term(node: ast.AST, names: set[str]) -> bool:
    if isinstance(node, ast.Name):
        names.add(node.id)
        return True
    if isinstance(node, ast.Constant):
        return type(node.value) is int
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _logic_term(node.operand, names)
    if isinstance(node, ast.BinOp) and isinstance(node.op, _ARITH_OPS):
        return _logic_term(node.left, names) and _logic_term(node.right, names)
    return False


def _logic_formula(node: ast.AST, names: set[str]) -> bool:
    if isinstance(node, ast.BoolOp):
        return all(_logic_formula(value, names) for value in node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _logic_formula(node.operand, names)
    if isinstance(node, ast.Compare):
        return all(isinstance(op, _COMPARE_OPS) for op in node.ops) and all(
            _logic_term(part, names) for part in (node.left, *node.comparators)
        )
    return False


def translate_logic(query: str) -> LogicTranslation | None:
    """The Z3 translation of a simple constraint query, or None outside the supported forms.

    The forms: comparisons of integer arithmetic (``+ - *``, integer literals) over named
    variables, joined by "and", commas or semicolons (each a constraint), "or" and "not" inside
    one; ``<``, ``<=``, ``>``, ``>=``, ``==`` (a single ``=`` too), ``!=`` and chains such as
    ``3 < x < 5``; words "is greater/less than", "is at least/most", "equals", "is not equal to",
    "plus", "minus", "times". An introduction ending in "such that", "where", "with" or ":" is
    dropped, as are leading "Is it possible that", "Can", "Check whether", "Find". Variables are
    Int, or Real when the query says "real". Examples: "x > 3 and x < 5" (SAT), "x > 5 and
    x < 3" (UNSAT), "Is there an integer x such that x > 3 and x < 4?" (UNSAT),
    "Find x and y such that x + y == 10, x > y, y > 2" (SAT).
    """
    if not query or len(query) > _MAX_QUERY_CHARS:
        return None
    text = " ".join(query.split()).rstrip("?.! ")
    parts = _LOGIC_INTRO.split(text)
    body = parts[-1].strip() if len(parts) > 1 else text
    body = _LOGIC_LEAD.sub("", body).strip()
    for pattern, repl in _LOGIC_PHRASES:
        body = re.sub(pattern, repl, body, flags=re.IGNORECASE)
    body = re.sub(r"\b(AND|OR|NOT|And|Or|Not)\b", lambda m: m.group(1).lower(), body)
    body = re.sub(r"(?<![<>=!])=(?!=)", "==", body)
    body = re.sub(r"\s*[;,]\s*(?:and\s+)?", " and ", body)
    try:
        tree = _parse_expression(body).body
    except SyntaxError:
        return None
    clauses = (
        tree.values if isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And) else [tree]
    )
    names: set[str] = set()
    if len(clauses) > _MAX_LOGIC_CONSTRAINTS or not all(_logic_formula(c, names) for c in clauses):
        return None
    if not names or any(keyword.iskeyword(name) or name in {"True", "False"} for name in names):
        return None
    kind = "Real" if re.search(r"\breals?\b", query, re.IGNORECASE) else "Int"
    ordered = sorted(names)
    return LogicTranslation(
        query, {name: kind for name in ordered}, tuple(ast.unparse(c) for c in clauses)
    )


_EMPTY_LOGIC: Final = '{"variables": {}, "constraints": [], "goal": "SATISFIABILITY"}'


def logic_translation_for(query: str) -> str:
    """The logic-translation reply; outside the forms, no constraints (the server: an error)."""
    translation = translate_logic(query)
    return translation.to_json() if translation else _EMPTY_LOGIC


def wrong_logic_translation_for(query: str) -> str:
    """A sloppy translation: the last constraint negated ("x < 3" becomes "not x < 3")."""
    translation = translate_logic(query)
    if translation is None:
        return _EMPTY_LOGIC
    *kept, last = translation.constraints
    negated = ast.unparse(ast.UnaryOp(ast.Not(), _parse_expression(last).body))
    return LogicTranslation(query, translation.variables, (*kept, negated)).to_json()


def unevaluable_logic_translation_for(query: str) -> str:
    """A logic translation cut off mid-JSON: the server cannot parse it."""
    return _truncated(logic_translation_for(query))


# --------------------------------------------------------------------------------------------
# Documentation and samples

QUESTION_FORMS: Final[tuple[tuple[str, str, str], ...]] = (
    ("arithmetic", "What is 2 + 2?", "+ - * / ** and parentheses; words like 'plus', 'times'"),
    ("arithmetic", "What is 5 * 5?", "integer exponents only"),
    ("arithmetic", "Calculate 12 / 4", "non-terminating results rounded to 6 places"),
    ("percent_of", "Calculate 15% of $200", "p% of x"),
    ("percent_of", "What is 20% of 50?", "p% of x"),
    ("percent_ratio", "What percent of 80 is 20?", "y as a percentage of x"),
    ("percent_applied", "What is 80 increased by 25%?", "x raised or cut by p%"),
    ("percent_change", "What is the percentage change from 80 to 100?", "signed (b-a)/a*100"),
    ("discount_price", "What is the price after a 20% discount on $80?", "price paid"),
    ("discount_saving", "How much do you save with a 20% discount on $80?", "the saving"),
    ("tip", "What is a 15% tip on $45.50?", "the tip; 'total with ...' gives bill + tip"),
    ("tax_total", "What is the total with an 8% sales tax on $50?", "bill + tax"),
    ("simple_interest", "Calculate 10% interest on $1000", "one year unless a term is given"),
    ("simple_interest", "What is the simple interest on $1000 at 5% for 3 years?", "P*r*t"),
    (
        "compound_amount",
        "What is $1000 at 5% compounded annually for 3 years?",
        "final amount P*(1+r/n)**(n*t); annually/semi-annually/quarterly/monthly/weekly/daily",
    ),
    (
        "compound_interest",
        "How much interest does $1000 earn at 4% compounded quarterly for 2 years?",
        "the interest only, when asked for",
    ),
    (
        "loan_payment",
        "What is the monthly payment on a $200,000 loan at 6% for 30 years?",
        "annuity payment, rounded to the cent",
    ),
)


def question_forms() -> list[str]:
    """One line per supported question form: kind, an example, and a note (for docs and CLI)."""
    return [f"{kind:<17} {example}  ({note})" for kind, example, note in QUESTION_FORMS]


def _money(rng: random.Random, low: int, high: int, step: int = 1) -> int:
    return rng.randrange(low, high + 1, step)


_TEMPLATES: Final[tuple[Callable[[random.Random], str], ...]] = (
    lambda r: f"What is {r.randint(2, 99)} + {r.randint(2, 99)}?",
    lambda r: f"What is {r.randint(2, 30)} * {r.randint(2, 30)}?",
    lambda r: f"Calculate {r.choice([12, 24, 36, 48, 60, 100, 144])} / {r.choice([2, 3, 4, 6])}",
    lambda r: f"What is ({r.randint(1, 20)} + {r.randint(1, 20)}) * {r.randint(2, 9)}?",
    lambda r: f"What is {r.randint(2, 12)} ** 2 - {r.randint(1, 50)}?",
    lambda r: f"Calculate {r.choice([5, 10, 15, 20, 25, 30])}% of ${_money(r, 20, 900, 10)}",
    lambda r: f"What is {r.choice([10, 12.5, 20, 40, 75])}% of {_money(r, 8, 400, 4)}?",
    lambda r: f"Calculate {r.choice([5, 8, 10, 12])}% interest on ${_money(r, 500, 5000, 100)}",
    lambda r: (
        f"What is the simple interest on ${_money(r, 500, 10000, 500)} at "
        f"{r.choice([3, 4, 5, 6, 7.5])}% for {r.randint(1, 10)} years?"
    ),
    lambda r: (
        f"What is ${_money(r, 1000, 20000, 1000)} at {r.choice([2, 3, 4, 5, 6])}% compounded "
        f"{r.choice(['annually', 'semi-annually', 'quarterly', 'monthly'])} for "
        f"{r.randint(1, 5)} years?"
    ),
    lambda r: (
        f"How much interest does ${_money(r, 1000, 10000, 500)} earn at "
        f"{r.choice([3, 4, 5])}% compounded quarterly for {r.randint(1, 4)} years?"
    ),
    lambda r: (
        f"What is the percentage change from {_money(r, 20, 200, 5)} to {_money(r, 20, 200, 5)}?"
    ),
    lambda r: (
        f"What is the price after a {r.choice([10, 15, 20, 25, 30, 50])}% discount on "
        f"${_money(r, 20, 500, 5)}?"
    ),
    lambda r: (
        f"What is a {r.choice([15, 18, 20, 22])}% tip on ${r.randint(10, 150)}."
        f"{r.choice(['00', '50', '25', '75'])}?"
    ),
    lambda r: (
        f"What is the total with a {r.choice([5, 6, 7, 8, 10])}% sales tax on "
        f"${_money(r, 10, 400)}?"
    ),
    lambda r: (
        f"What is the monthly payment on a ${_money(r, 50000, 500000, 10000):,} loan at "
        f"{r.choice([3, 4, 4.5, 5, 6, 7])}% for {r.choice([10, 15, 20, 30])} years?"
    ),
)


def sample_questions(n: int, seed: int = 0) -> list[SampleQuestion]:
    """`n` mixed questions from the family with their known answers, reproducible per seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    out: list[SampleQuestion] = []
    while len(out) < n:
        text = rng.choice(_TEMPLATES)(rng)
        solution = solve(text)
        if solution is None:  # pragma: no cover - every template is in the family
            continue
        out.append(SampleQuestion(text, solution.kind, solution.answer, solution.qwed_value))
    return out
