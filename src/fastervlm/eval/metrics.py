"""What a judge reply means, and Accuracy / Score with confidence intervals and paired tests.

Two modes, read from the replies a judgment stored (one per attempt, in order):
- "strict": the final reply counts when it is a dict with pred exactly yes/no and a numeric score in [0, 5]
  (4.8 stays 4.8). Anything else is unjudged: reported as missing, never scored as wrong.
- "compat": the original eval_video_qa.py, arithmetic and quirks included. The original kept the
  first reply that `ast.literal_eval` could read (and `json.dump` could store); we use the first such reply of
  the attempts, not the last. Aggregation: every kept reply enters the score denominator; score =
  int(reply['score']) (4.8 -> 4); yes if "yes" in pred.lower(), elif no if "no" in pred.lower() (substring tests:
  "not sure" is a no). An exception on the way (no score, a score "4.5", a reply that is not a dict) leaves the
  item in the denominator with 0 added and no yes/no; one after the score was added (no pred) keeps the score.
  A reply no attempt made readable is unjudged (the original retried such items forever).
Accuracy = yes / (yes + no); Score = mean score. In both modes a reply wrapped in a Markdown code fence is read as
its content (the original could not parse it and retried such an item forever).
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

Mode = Literal["strict", "compat"]
MODES: tuple[Mode, ...] = ("strict", "compat")
Z95 = 1.959963984540054
"""The standard normal 97.5% quantile: two-sided 95% intervals."""

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


def parse_reply(text: str | None) -> Any:
    """The Python literal in a judge reply (a surrounding Markdown code fence is removed), or None."""
    if text is None:
        return None
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


@dataclass(frozen=True)
class Verdict:
    """A judgment read exactly: pred is "yes" or "no", score a number in [0, 5]."""

    pred: str
    score: float


def strict_verdict(value: Any) -> tuple[Verdict | None, str | None]:
    """(verdict, None) for an exact reply, else (None, what is wrong with it)."""
    if not isinstance(value, dict):
        return None, f"not a dict ({type(value).__name__})"
    pred, score = value.get("pred"), value.get("score")
    if not isinstance(pred, str) or pred.strip().lower() not in ("yes", "no"):
        return None, f"pred must be 'yes' or 'no', got {pred!r}"
    if isinstance(score, str):
        try:
            score = float(score)
        except ValueError:
            return None, f"score is not a number: {score!r}"
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) or not 0 <= score <= 5:
        return None, f"score must be a number from 0 to 5, got {value.get('score')!r}"
    return Verdict(pred.strip().lower(), float(score)), None


@dataclass(frozen=True)
class ItemResult:
    """One judged item as the chosen mode reads it: correct is None when it has no yes/no; score is an int in
    compat (the original's int()), so the mean is exactly its score_sum / count."""

    correct: bool | None
    score: float


def read_item(value: Any, mode: Mode) -> ItemResult | None:
    """One parsed reply read in `mode`; None when the item is unjudged in that mode. In compat, `value` is a reply
    the original accepted (see `original_reply`), except None, which stands for "no readable reply"."""
    if mode == "strict":
        verdict, _ = strict_verdict(value)
        return None if verdict is None else ItemResult(verdict.pred == "yes", verdict.score)
    return None if value is None else _original_counting(value)


def _original_counting(value: Any) -> ItemResult:
    """The original's per-entry aggregation of a stored reply: counted, then score and yes/no until an error."""
    try:
        score = int(value["score"])  # a non-dict reply raises here too (list, str and None cannot be indexed by 'score')
    except Exception:  # noqa: BLE001  (the original's bare except: counted, 0 added, no yes/no)
        return ItemResult(None, 0)
    try:
        pred = value["pred"].lower()
    except Exception:  # noqa: BLE001
        return ItemResult(None, score)
    correct = True if "yes" in pred else False if "no" in pred else None
    return ItemResult(correct, score)


_NOT_STORED = object()


def _as_stored(text: str | None) -> Any:
    """The reply as the original stored and re-read it (ast.literal_eval, then a JSON round trip), or _NOT_STORED
    when literal_eval fails or the value cannot be JSON (a set, bytes: the original's file was left broken)."""
    if text is None:
        return _NOT_STORED
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        value = ast.literal_eval(fenced.group(1).strip() if fenced else text)
        return json.loads(json.dumps(value))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_STORED


def original_reply(replies: list[str | None]) -> tuple[bool, Any]:
    """(True, value) for the first reply the original would have kept, as it aggregated it; (False, None) when no
    attempt gave one."""
    for text in replies:
        value = _as_stored(text)
        if value is not _NOT_STORED:
            return True, value
    return False, None


def read_judgment(replies: list[str | None], mode: Mode) -> ItemResult | None:
    """One judgment's replies (every attempt's, in order) read in `mode`; None when unjudged in that mode."""
    if mode == "strict":
        return read_item(parse_reply(replies[-1]) if replies else None, "strict")
    kept, value = original_reply(replies)
    return _original_counting(value) if kept else None


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (good at small n and near 0 or 1)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


SCORE_RANGE = (0.0, 5.0)
"""The judge's score scale; a mean score and its interval lie in it."""


def mean_interval(values: list[float], z: float = Z95, bounds: tuple[float, float] | None = None
                  ) -> tuple[float, float] | None:
    """Normal-approximation interval for a mean (the sample standard deviation, n - 1), clipped to `bounds` (the
    values' own range: the mean cannot leave it, so neither does the interval)."""
    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    half = z * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n) if n > 1 else 0.0
    low, high = mean - half, mean + half
    return (low, high) if bounds is None else (max(bounds[0], low), min(bounds[1], high))


@dataclass
class Metrics:
    """Accuracy and Score of one run over the items that have a usable judgment."""

    mode: Mode
    judged: int
    """Items in the score denominator."""
    yes: int
    no: int
    accuracy: float | None
    accuracy_ci: tuple[float, float] | None
    score: float | None
    score_ci: tuple[float, float] | None
    items: dict[str, ItemResult] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "items"}


def compute(replies: dict[str, Any], mode: Mode) -> Metrics:
    """Metrics from {item id: parsed reply} (None: unreadable); replies unusable in `mode` are left out."""
    if mode not in MODES:
        raise ValueError(f"unknown metrics mode {mode!r}")
    return compute_items({i: r for i, v in replies.items() if (r := read_item(v, mode)) is not None}, mode)


def compute_judgments(replies: dict[str, list[str | None]], mode: Mode) -> Metrics:
    """Metrics from {item id: the replies of its attempts, in order} (what judgments.jsonl stores)."""
    if mode not in MODES:
        raise ValueError(f"unknown metrics mode {mode!r}")
    return compute_items({i: r for i, texts in replies.items() if (r := read_judgment(texts, mode)) is not None}, mode)


def compute_items(items: dict[str, ItemResult], mode: Mode) -> Metrics:
    """Accuracy and Score over the items read in `mode`; the score is the mean of their scores (compat: of the
    int scores, as the original's score_sum / count)."""
    yes = sum(r.correct is True for r in items.values())
    no = sum(r.correct is False for r in items.values())
    scores = [r.score for r in items.values()]
    return Metrics(
        mode=mode,
        judged=len(items),
        yes=yes,
        no=no,
        accuracy=yes / (yes + no) if yes + no else None,
        accuracy_ci=wilson_interval(yes, yes + no),
        score=sum(scores) / len(scores) if scores else None,
        score_ci=mean_interval(scores, bounds=SCORE_RANGE),
        items=items,
    )


def paired_z_p(diffs: list[float]) -> float:
    """Two-sided p of a paired z-test that the mean difference is 0 (normal approximation; n >= 2)."""
    n = len(diffs)
    if n < 2:
        return 1.0
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return math.erfc(abs(mean / (sd / math.sqrt(n))) / math.sqrt(2))


@dataclass
class PairedTest:
    """Run B minus run A on the items both judged: McNemar's exact test for accuracy, a paired test for score."""

    common: int
    a_only_correct: int
    """Items A got right and B got wrong (McNemar's discordant pair counts)."""
    b_only_correct: int
    accuracy_diff: float | None
    accuracy_p: float
    score_pairs: int
    score_diff: float | None
    score_diff_ci: tuple[float, float] | None
    score_p: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(b + c, 1/2) test on the discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def paired_test(a: Metrics, b: Metrics) -> PairedTest:
    """Compare two runs on the same items (same benchmark, same mode)."""
    both = [i for i in a.items if i in b.items]
    acc_pairs = [(a.items[i].correct, b.items[i].correct) for i in both]
    acc_pairs = [(x, y) for x, y in acc_pairs if x is not None and y is not None]
    a_only = sum(x and not y for x, y in acc_pairs)
    b_only = sum(y and not x for x, y in acc_pairs)
    diffs = [b.items[i].score - a.items[i].score for i in both]
    return PairedTest(
        common=len(acc_pairs),
        a_only_correct=a_only,
        b_only_correct=b_only,
        accuracy_diff=(b_only - a_only) / len(acc_pairs) if acc_pairs else None,
        accuracy_p=mcnemar_exact_p(a_only, b_only),
        score_pairs=len(diffs),
        score_diff=sum(diffs) / len(diffs) if diffs else None,
        score_diff_ci=mean_interval(diffs, bounds=(SCORE_RANGE[0] - SCORE_RANGE[1], SCORE_RANGE[1] - SCORE_RANGE[0])),
        score_p=paired_z_p(diffs),
    )
