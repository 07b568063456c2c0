"""Metrics: compat reproduces the original's counting (quirks included), strict parses exactly; intervals and
paired tests against hand-computed values."""

from __future__ import annotations

import math

import pytest

from fastervlm.eval.metrics import (
    ItemResult,
    compute,
    compute_judgments,
    mcnemar_exact_p,
    mean_interval,
    paired_test,
    parse_reply,
    strict_verdict,
    wilson_interval,
)

# Judge replies as the judge wrote them, with the original's pitfalls.
REPLIES = {
    "a": "{'pred': 'yes', 'score': 4.8}",  # compat truncates 4.8 -> 4
    "b": "{'pred': 'no', 'score': 2}",
    "c": "{'pred': 'not sure', 'score': 3}",  # compat: substring "no" -> a no
    "d": "{'pred': 'Yes, it is', 'score': 5}",  # compat: substring "yes"
    "e": "{'pred': 'yes'}",  # no score: compat counts it with 0 and skips its yes
    "f": "{'score': '4'}",  # no pred: compat adds int('4') and no yes/no
    "g": "{'pred': 'no', 'score': '4.5'}",  # int('4.5') raises: compat counts 0, and no yes/no
    "h": "Sure! Here you go.",  # not a literal: the original retried forever; unjudged
    "i": "{'pred': 'I know', 'score': 1}",  # compat: "no" in "i know"
    "j": "```python\n{'pred': 'yes', 'score': 3}\n```",  # a fenced dict
    "k": "['yes', 4]",  # a literal but not a dict: the original stored it; ['score'] raises -> counted with 0
    "l": "{'pred': None, 'score': 2}",  # None.lower() raises after the score was added: 2, no yes/no
    "m": "{'pred': 'yes', 'score': {1, 2}}",  # a set: the original could not store it as JSON; unjudged
}


def original_loop(replies: dict[str, str]) -> tuple[int, int, int, int]:
    """The original's two steps as the oracle: annotate() keeps a reply when ast.literal_eval reads
    it and json.dump stores it; the aggregation re-reads the JSON and counts. (count, score_sum, yes, no).
    Only the code-fence unwrapping is ours (the original retried fenced replies forever)."""
    import ast
    import json

    stored = []
    for text in replies.values():
        inner = text.strip()
        if inner.startswith("```"):
            inner = inner.split("\n", 1)[1].rsplit("```", 1)[0]
        try:
            stored.append(json.loads(json.dumps([ast.literal_eval(inner), {"q": "..."}])))
        except Exception:  # noqa: BLE001  (annotate's except: printed, nothing kept)
            continue
    count = score_sum = yes = no = 0
    for result in stored:
        try:
            count += 1
            score_sum += int(result[0]["score"])
            pred = result[0]["pred"]
            if "yes" in pred.lower():
                yes += 1
            elif "no" in pred.lower():
                no += 1
        except Exception:  # noqa: BLE001
            pass
    return count, score_sum, yes, no


def test_compat_reproduces_the_original_by_hand_and_by_transcription() -> None:
    m = compute_judgments({k: [v] for k, v in REPLIES.items()}, "compat")
    # By hand: counted a..g, i, j, k, l = 11; scores 4+2+3+5+0+4+0+1+3+0+2 = 24; yes a, d, j; no b, c, i.
    assert (m.judged, m.yes, m.no) == (11, 3, 3)
    assert m.score == 24 / 11
    assert m.accuracy == 0.5
    count, score_sum, yes, no = original_loop(REPLIES)
    assert (m.judged, m.yes, m.no) == (count, yes, no)
    assert m.score == score_sum / count  # exactly: the same integer sum over the same count


def test_compat_reads_the_first_reply_the_original_would_have_kept() -> None:
    """The judge asks again after a reply strict cannot use; the original would have stopped at the first one it
    could read, so compat reads that one, not the last."""
    attempts = {
        "x": ["{'pred': 'yes'}", "not a dict at all", None],  # kept: the first (no score: 0, no yes)
        "y": ["garbled {", "{'pred': 'Yes.', 'score': 4.0}", "{'pred': 'no', 'score': 1}"],  # kept: the second
        "z": ["nothing readable", None],  # never kept: unjudged
    }
    m = compute_judgments(attempts, "compat")
    assert sorted(m.items) == ["x", "y"]
    assert (m.items["x"], m.items["y"]) == (ItemResult(None, 0), ItemResult(True, 4))
    strict = compute_judgments(attempts, "strict")
    assert sorted(strict.items) == ["y"] and strict.items["y"] == ItemResult(False, 1.0)  # the last reply


def test_compat_score_is_the_original_division_on_the_issue_example() -> None:
    """12 items, one reply without a score: the original divides by 12 (26/12 = 2.17), not by 11 (2.36)."""
    replies = {f"q{i}": ["{'pred': 'yes', 'score': 3}" if i < 4 else "{'pred': 'no', 'score': 2}"] for i in range(11)}
    replies["q11"] = ["{'pred': 'yes'}"]
    m = compute_judgments(replies, "compat")
    count, score_sum, _, _ = original_loop({k: v[0] for k, v in replies.items()})
    assert (m.judged, count, score_sum) == (12, 12, 26)
    assert f"{m.score:.2f}" == "2.17" and m.score == 26 / 12
    assert f"{compute_judgments(replies, 'strict').score:.2f}" == "2.36"  # strict leaves the unusable reply out


def test_strict_reads_exactly_and_leaves_the_rest_unjudged() -> None:
    m = compute({k: parse_reply(v) for k, v in REPLIES.items()}, "strict")
    # Valid: a (yes 4.8), b (no 2), g (no 4.5), j (yes 3).
    assert sorted(m.items) == ["a", "b", "g", "j"]
    assert (m.yes, m.no) == (2, 2)
    assert m.score == pytest.approx((4.8 + 2 + 4.5 + 3) / 4)
    assert m.accuracy == pytest.approx(0.5)


@pytest.mark.parametrize("value, problem", [
    ({"pred": "maybe", "score": 3}, "pred must be"),
    ({"pred": "yes", "score": 7}, "from 0 to 5"),
    ({"pred": "yes", "score": True}, "from 0 to 5"),
    ({"pred": "yes", "score": float("nan")}, "from 0 to 5"),
    ({"pred": "yes", "score": "high"}, "not a number"),
    (["yes", 3], "not a dict"),
])
def test_strict_verdict_names_the_problem(value: object, problem: str) -> None:
    verdict, why = strict_verdict(value)
    assert verdict is None and problem in why


def test_strict_verdict_accepts_case_space_and_numeric_strings() -> None:
    verdict, _ = strict_verdict({"pred": " YES ", "score": "4.5"})
    assert (verdict.pred, verdict.score) == ("yes", 4.5)
    assert parse_reply(None) is None and parse_reply("{'a': (1,") is None


def test_wilson_interval_known_value() -> None:
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) is None
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == pytest.approx(1.0)


def test_mean_interval_known_value() -> None:
    low, high = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * math.sqrt(5 / 3) / 2
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half))


def test_mcnemar_exact_p_values() -> None:
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact_p(5, 5) == 1.0
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 2000) < 1e-300 or mcnemar_exact_p(0, 2000) == 0.0  # big n without overflow
    assert mcnemar_exact_p(3, 7) == mcnemar_exact_p(7, 3)


def _metrics(correct: list[bool], scores: list[float]):
    replies = {f"q{i}": {"pred": "yes" if c else "no", "score": s} for i, (c, s) in enumerate(zip(correct, scores))}
    return compute(replies, "strict")


def test_paired_test_counts_discordant_pairs_and_scores() -> None:
    a = _metrics([True, True, False, False, True], [4, 4, 1, 1, 5])
    b = _metrics([True, False, True, True, True], [5, 3, 2, 2, 5])
    t = paired_test(a, b)
    assert (t.common, t.a_only_correct, t.b_only_correct) == (5, 1, 2)
    assert t.accuracy_diff == pytest.approx(1 / 5)
    assert t.accuracy_p == pytest.approx(mcnemar_exact_p(1, 2))
    diffs = [1, -1, 1, 1, 0]
    mean = sum(diffs) / 5
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4) / math.sqrt(5)
    assert t.score_diff == pytest.approx(mean)
    assert t.score_p == pytest.approx(math.erfc(abs(mean / se) / math.sqrt(2)))


def test_paired_test_uses_only_common_items_and_handles_identical_runs() -> None:
    a = _metrics([True, False, True], [5, 1, 5])
    same = paired_test(a, a)
    assert (same.accuracy_p, same.score_p, same.score_diff) == (1.0, 1.0, 0.0)
    b = compute({"q0": {"pred": "no", "score": 0}, "zz": {"pred": "yes", "score": 5}}, "strict")
    t = paired_test(a, b)
    assert (t.common, t.a_only_correct, t.score_pairs) == (1, 1, 1)
