"""A prompt that fits the LLM's context but whose answer could run past it (prompt + max_new_tokens above
max_position_embeddings) is refused, never answered silently at positions the model was not built for: the error
names both numbers and the fixes. The command line stops with it; `eval predict` records it as that item's error
(the rest of its batch is answered)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fastervlm.cli import main
from fastervlm.errors import PromptTooLongError
from fastervlm.eval.benchmarks import BENCHMARKS, load_items
from fastervlm.eval.predict import predict_items, prepare_run
from fastervlm.models.base import GenerationSettings

CONTEXT = 4096
ROOM = 40
"""The long question leaves this many positions for the answer."""


def _prompt_tokens(pipeline, question: str) -> int:
    pieces = pipeline.adapter.prompt(question)
    text = sum(len(piece) for piece in pieces if isinstance(piece, list))
    return text + pipeline.num_frames * pipeline.num_patches


@pytest.fixture(scope="module")
def long_question(tiny_pipeline) -> str:
    """A question whose prompt (with every visual token) is CONTEXT - ROOM tokens long."""
    words = "what moves " * 10
    question = ""
    while _prompt_tokens(tiny_pipeline, question + words) <= CONTEXT - ROOM:
        question += words
    while _prompt_tokens(tiny_pipeline, question + "a ") <= CONTEXT - ROOM:
        question += "a "
    assert CONTEXT - ROOM - 1 <= _prompt_tokens(tiny_pipeline, question) <= CONTEXT - ROOM
    return question


def test_the_library_refuses_it_naming_both_numbers(tiny_pipeline, long_question: str) -> None:
    length = _prompt_tokens(tiny_pipeline, long_question)
    assert tiny_pipeline.adapter.max_context == CONTEXT
    pixels = torch.zeros(tiny_pipeline.num_frames, 3, 112, 112)
    with pytest.raises(PromptTooLongError) as err:
        tiny_pipeline.answer(long_question, pixels=pixels, generation=GenerationSettings(max_new_tokens=ROOM + 10))
    assert str(err.value).startswith(f"the prompt is {length} tokens and its answer may take up to {ROOM + 10} more")
    assert f"lower max_new_tokens (--max-new-tokens) to {CONTEXT - length} or less" in str(err.value)
    answer = tiny_pipeline.answer(long_question, pixels=pixels, generation=GenerationSettings(max_new_tokens=CONTEXT - length))
    assert answer.prompt_tokens == length and len(answer.output_ids) <= CONTEXT - length


def test_the_cli_refuses_it_in_one_line(tiny_checkpoint: Path, synthetic_video: Path, long_question: str, capsys) -> None:
    code = main(["answer", "--model", str(tiny_checkpoint), "--video", str(synthetic_video), "--question",
                 long_question, "--max-new-tokens", str(ROOM + 10), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"its answer may take up to {ROOM + 10} more (max_new_tokens), past the {CONTEXT} tokens" in err


def test_eval_predict_records_it_as_that_items_error(tiny_pipeline, synthetic_video: Path, long_question: str,
                                                     tmp_path: Path) -> None:
    root = tmp_path / "data" / "MSVD_Zero_Shot_QA"
    (root / "videos").mkdir(parents=True)
    shutil.copy(synthetic_video, root / "videos" / "clip.mp4")
    questions = {"short": "What is moving?", "long": long_question, "also short": "Where is it?"}
    (root / "test_q_1k.json").write_text(json.dumps(
        [{"video_name": "clip", "question": q, "question_id": i} for i, q in questions.items()]))
    (root / "test_a_1k.json").write_text(json.dumps([{"answer": "a", "question_id": i} for i in questions]))
    loaded = load_items(BENCHMARKS["msvd"], tmp_path / "data")
    pruner, generation = tiny_pipeline.pruner("none"), GenerationSettings(max_new_tokens=ROOM + 10)
    run = prepare_run(tiny_pipeline, loaded, tmp_path / "data", pruner, generation, out=tmp_path / "runs")
    summary = predict_items(tiny_pipeline, run, loaded, tmp_path / "data", pruner, generation, batch_size=3,
                            progress=False)
    records = run.predictions()
    assert (summary.done, summary.errors) == (2, 1)
    assert records["long"]["pred"] is None and "its answer may take up to 50 more" in records["long"]["error"]
    assert all(records[i]["pred"] is not None and len(records[i]["output_ids"]) <= ROOM + 10 for i in ("short", "also short"))


def test_with_multi_axis_positions_the_room_counts_from_the_next_position() -> None:
    """Qwen2.5-VL's temporal positions can reach past the prompt's length: the answer's first token takes the
    position after the largest one, so the room is counted from there, not from the token count."""
    from types import SimpleNamespace

    from fastervlm.prompts import Prompt, check_answer_room

    adapter = SimpleNamespace(max_context=100, family="qwen2-5-vl-hf")
    # 5 text tokens, 3 video tokens whose temporal positions jumped ahead, 2 text tokens continuing after them
    positions = torch.tensor([0, 1, 2, 3, 4, 70, 70, 70, 71, 72]).expand(3, -1)
    prompt = Prompt(torch.zeros(10, 4), positions, torch.zeros(10, dtype=torch.bool), 8, None)
    assert prompt.next_position == 73
    check_answer_room(adapter, [prompt], 27)  # positions 73..99: it fits; 28 would need position 100
    with pytest.raises(PromptTooLongError) as err:
        check_answer_room(adapter, [prompt], 28)
    assert "lower max_new_tokens (--max-new-tokens) to 27 or less" in str(err.value)
