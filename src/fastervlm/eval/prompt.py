"""The judge's prompt, verbatim and versioned: the chat messages sent for one item.

A changed prompt is a new version (a new entry in PROMPTS), never an edit of an old one: the version is recorded
in judge.json and is part of the cache key, so judgments of two prompts never mix. tests/data holds a golden copy
of the request.
"""

from __future__ import annotations

from collections.abc import Callable

from fastervlm.errors import FasterVLMError

# The prompt of Video-ChatGPT's evaluate_activitynet_qa.py as used by Video-LLaVA/FasterVLM eval_video_qa.py
# (the original's), character for character: the missing separators ("task:------##INSTRUCTIONS: ", "STRING.DO NOT")
# and the double space in "is  a string" are the original's.
_SYSTEM_V1 = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine if "
    "they match meaningfully. Here's how you can accomplish the task:------##INSTRUCTIONS: - Focus on the meaningful "
    "match between the predicted answer and the correct answer.\n- Consider synonyms or paraphrases as valid "
    "matches.\n- Evaluate the correctness of the prediction compared to the answer."
)
_USER_V1 = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\nCorrect Answer: "
    "{answer}\nPredicted Answer: {pred}\n\nProvide your evaluation only as a yes/no and score where the score is an "
    "integer value between 0 and 5, with 5 indicating the highest meaningful match. Please generate the response in "
    "the form of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' "
    "or 'no' and value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. "
    "Only provide the Python dictionary string. For example, your response should look like this: "
    "{{'pred': 'yes', 'score': 4.8}}."
)


def _messages_v1(question: str, answer: str, pred: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": _SYSTEM_V1},
        {"role": "user", "content": _USER_V1.format(question=question, answer=answer, pred=pred)},
    ]


PROMPTS: dict[str, Callable[[str, str, str], list[dict[str, str]]]] = {"videollava-qa-v1": _messages_v1}
"""Prompt versions by name. A changed prompt is a new version: cached judgments of the old one stay apart."""
PROMPT_VERSION = "videollava-qa-v1"


def judge_messages(question: str, answer: str, pred: str, version: str = PROMPT_VERSION) -> list[dict[str, str]]:
    """The chat messages for one item."""
    if version not in PROMPTS:
        raise FasterVLMError(f"unknown judge prompt version {version!r}; known: {', '.join(PROMPTS)}.")
    return PROMPTS[version](question, answer, pred)
