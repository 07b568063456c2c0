"""The tiny random checkpoints say what they are: one name (`tiny-random-<family>`, from a marker in config.json)
in every output that names a model, and short answers by default, while real checkpoints keep their folder name
and the original's 1024 new tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import fastervlm
from fastervlm.cli import main
from fastervlm.tiny.identity import (MARKER, ORIGINAL_MAX_NEW_TOKENS, TINY_MAX_NEW_TOKENS, default_max_new_tokens,
                                     is_tiny, model_name, model_title)

TINY_NAME = "tiny-random-video-llava"


@pytest.fixture(scope="module")
def unmarked(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint as a real download looks: the same files without the marker (and the tiny answer
    length), in a folder named like the real one."""
    root = tmp_path_factory.mktemp("unmarked")
    shutil.copytree(tiny_checkpoint.parent, root, dirs_exist_ok=True)
    checkpoint = root / tiny_checkpoint.name
    for name, key in (("config.json", MARKER), ("generation_config.json", "max_new_tokens")):
        data = json.loads((checkpoint / name).read_text())
        del data[key]
        (checkpoint / name).write_text(json.dumps(data))
    return checkpoint


def test_the_tiny_checkpoint_is_named_as_random_whatever_its_folder(tiny_checkpoint: Path, unmarked: Path) -> None:
    assert tiny_checkpoint.name == unmarked.name == "Video-LLaVA-7B"  # laid out like the real download
    assert is_tiny(tiny_checkpoint) and model_name(tiny_checkpoint) == TINY_NAME
    assert model_title(tiny_checkpoint) == f"{TINY_NAME} (random weights: its answers are noise)"
    assert not is_tiny(unmarked) and model_name(unmarked) == model_title(unmarked) == "Video-LLaVA-7B"
    assert model_name(unmarked.parent / "nowhere") == "nowhere"  # no config.json: not tiny, and no error here


def test_every_transformers_tiny_checkpoint_is_marked(tmp_path: Path) -> None:
    from fastervlm.tiny.hf import FAMILIES, write_tiny_hf_checkpoint

    for family in FAMILIES[:2]:
        folder = write_tiny_hf_checkpoint(tmp_path / family, family)
        assert model_name(folder).startswith("tiny-random-") and model_name(folder).endswith("-hf")
        assert default_max_new_tokens(folder) == TINY_MAX_NEW_TOKENS


def test_answers_default_to_the_checkpoints_length(tiny_pipeline, unmarked: Path) -> None:
    assert tiny_pipeline.default_generation().max_new_tokens == TINY_MAX_NEW_TOKENS
    assert fastervlm.load(unmarked, device="cpu").default_generation().max_new_tokens == ORIGINAL_MAX_NEW_TOKENS == 1024


def _answer_json(capsys, checkpoint: Path, video: Path, *extra: str) -> tuple[dict, str]:
    assert main(["answer", "--model", str(checkpoint), "--video", str(video), "--question", "What is moving?",
                 "--reduction", "0.9", "--json", *extra]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_answer_on_the_tiny_checkpoint_is_short_by_default_and_says_it_is_noise(capsys, tiny_checkpoint: Path,
                                                                                synthetic_video: Path) -> None:
    short, err = _answer_json(capsys, tiny_checkpoint, synthetic_video)
    assert len(short["output_ids"]) == TINY_MAX_NEW_TOKENS  # random weights never say EOS this soon
    assert f"the model is {TINY_NAME} (random weights: its answers are noise)" in err
    longer, _ = _answer_json(capsys, tiny_checkpoint, synthetic_video, "--max-new-tokens", "20")
    assert len(longer["output_ids"]) == 20 and longer["output_ids"][:TINY_MAX_NEW_TOKENS] == short["output_ids"]
    assert main(["answer", "--model", "tiny", "--video", str(synthetic_video), "--question", "What?"]) == 0
    summary = capsys.readouterr().err
    assert summary.startswith(f"[{TINY_NAME} (random weights: its answers are noise) · none]")
    assert f"{TINY_MAX_NEW_TOKENS} generated" in summary


def test_the_cli_reads_the_answer_length_before_loading(tiny_checkpoint: Path, unmarked: Path) -> None:
    from fastervlm.cli import build_parser
    from fastervlm.cli.common import generation_settings

    def length(*argv: str) -> int:
        args = build_parser().parse_args(["answer", "--video", "v", "--question", "q", *argv])
        return generation_settings(args).max_new_tokens

    assert length("--model", str(tiny_checkpoint)) == length("--model", "tiny") == TINY_MAX_NEW_TOKENS
    assert length("--model", str(unmarked)) == length("--model", "missing-folder") == 1024
    assert length("--model", "tiny", "--max-new-tokens", "5") == 5
    web = build_parser().parse_args(["web", "--model", str(unmarked)])
    assert generation_settings(web).max_new_tokens == 256  # the page's own default for a real checkpoint
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["answer"].format_help().split())
    assert "(default: 1024, the original's; on a tiny random checkpoint its own 16, from its generation_config.json)" in help_text


def test_eval_files_the_tiny_model_under_its_name(tiny_checkpoint: Path, unmarked: Path, tmp_path: Path) -> None:
    from eval_helpers import write_benchmark

    from fastervlm.eval.benchmarks import get_benchmark, load_items
    from fastervlm.eval.predict import model_identity, prepare_run

    write_benchmark(tmp_path / "data", ["1"])
    loaded = load_items(get_benchmark("msvd"), tmp_path / "data", None)
    for checkpoint, name in ((tiny_checkpoint, TINY_NAME), (unmarked, "Video-LLaVA-7B")):
        pipeline = fastervlm.load(checkpoint, device="cpu")
        run = prepare_run(pipeline, loaded, tmp_path / "data", pipeline.pruner("none"), out=tmp_path / "runs")
        assert run.path == tmp_path / "runs" / name / "msvd" / "none"
        assert model_identity(pipeline)["name"] == run.config()["model"]["name"] == name  # what report rows show


def test_show_legend_and_bench_header_name_the_tiny_model(tiny_pipeline, tiny_checkpoint: Path, unmarked: Path,
                                                          synthetic_video: Path) -> None:
    from fastervlm.bench import ModelSource
    from fastervlm.show import answer_notes

    answer = tiny_pipeline.answer("What?", video=synthetic_video, reduction=0.9,
                                  generation=fastervlm.GenerationSettings(max_new_tokens=1))
    notes = answer_notes(tiny_pipeline, answer, heatmap=True)
    assert [n for n in notes if TINY_NAME in n] == [
        f"model: {TINY_NAME} (random weights: its answers are noise, and what it keeps means nothing)"]
    assert ModelSource(checkpoint=str(tiny_checkpoint)).describe() == model_title(tiny_checkpoint)
    assert ModelSource(checkpoint=str(unmarked)).describe() == "Video-LLaVA-7B"
    geometry = ModelSource.video_llava_7b(1, 2)
    assert geometry.describe().startswith("random weights at video-llava-7b geometry")


def test_the_web_page_title_names_the_tiny_model(tiny_pipeline, tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason='needs the [web] extra: pip install "fastervlm[web]"')
    import gradio as gr

    from fastervlm.web.app import build_app
    from fastervlm.web.settings import WebSettings

    page = build_app(tiny_pipeline, WebSettings(), tmp_path)
    assert page.title == f"fastervlm · {TINY_NAME}"
    headings = [b.value for b in page.blocks.values() if isinstance(b, gr.Markdown) and str(b.value).startswith("## ")]
    assert headings[0].startswith(f"## fastervlm · {TINY_NAME} (random weights: its answers are noise)\n")
