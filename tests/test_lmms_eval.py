"""The lmms-eval plug-in through lmms-eval's own entry point (`python -m lmms_eval`), on local tasks this test writes
(task YAMLs over local JSON data and synthetic videos): a generation task and a multiple-choice task (options in the
prompt, answered by generation), for the original-format Video-LLaVA and LLaVA-OneVision, with two methods each.
Every answer must equal `Pipeline.answer`'s for the same prompt and video.

Needs lmms-eval installed beside fastervlm (`pip install -e ".[lmms-eval]"`, docs/lmms-eval.md); `.ci/run` runs this
file in its own virtual environment, where it is."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lmms_eval", reason='lmms-eval is not installed here: pip install -e ".[lmms-eval]" '
                    "(docs/lmms-eval.md; .ci/run runs these tests in a virtual environment of their own)")

import torch  # noqa: E402
import yaml  # noqa: E402
from hf_tiny import checkpoint  # noqa: E402

import fastervlm  # noqa: E402
from fastervlm.errors import FasterVLMError  # noqa: E402
from fastervlm.models.base import GenerationSettings  # noqa: E402
from fastervlm.tiny import TOWER_DIR  # noqa: E402
from fastervlm.tiny.video import write_synthetic_video  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
FUNCTION = "FUNCTION__"
STOP = "<stop-marker>"
"""The tasks' `until`: a string the tiny models never produce (checked), so the answers are compared whole."""

UTILS = '''
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [os.path.join(HERE, "videos", doc["video"])]


def qa_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def mc_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\\n".join(f"{letter}. {option}" for letter, option in zip("ABCD", doc["options"]))
    return f"{doc['question']}\\n{options}\\nAnswer with the option's letter from the given choices directly."


def qa_process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"].lower())}


def mc_process_results(doc, results):
    return {"accuracy": float(results[0].strip()[:1].upper() == doc["answer"])}
'''

QA = [("a", "What is moving in the video?", "a square"), ("b", "What colour is the disc?", "red"),
      ("a", "Where does the square go?", "right"), ("b", "Is it day or night?", "day")]
MC = [("a", "What moves right?", ["a square", "a disc", "a car", "nothing"], "A"),
      ("b", "What moves down?", ["a square", "a disc", "a car", "nothing"], "B"),
      ("a", "How many objects move?", ["one", "two", "three", "four"], "B")]
TASKS = {"fvlm_qa": ("qa", QA, 6, "exact_match"), "fvlm_mc": ("mc", MC, 3, "accuracy")}


def _task_yaml(task: str, data: Path, prefix: str, max_new_tokens: int, metric: str) -> dict[str, Any]:
    return {
        "task": task, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_target": "answer",
        "doc_to_visual": f"{FUNCTION}utils.doc_to_visual", "doc_to_text": f"{FUNCTION}utils.{prefix}_doc_to_text",
        "process_results": f"{FUNCTION}utils.{prefix}_process_results",
        "generation_kwargs": {"max_new_tokens": max_new_tokens, "temperature": 0, "do_sample": False, "until": [STOP]},
        "metric_list": [{"metric": metric, "aggregation": "mean", "higher_is_better": True}],
    }


def _write_yaml(path: Path, content: dict[str, Any]) -> None:
    """A task YAML, with lmms-eval's `!function` tag where a value starts with FUNCTION."""
    path.write_text(yaml.safe_dump(content, sort_keys=False).replace(FUNCTION, "!function "))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for --include_path: utils.py, two task YAMLs, their JSON data, two synthetic videos."""
    folder = tmp_path_factory.mktemp("lmms_tasks")
    (folder / "videos").mkdir()
    for seed, name in enumerate("ab"):
        write_synthetic_video(folder / "videos" / f"{name}.mp4", seed=seed, num_frames=12)
    (folder / "utils.py").write_text(UTILS)
    docs = {"fvlm_qa": [{"id": f"qa{i}", "video": f"{v}.mp4", "question": q, "answer": a}
                        for i, (v, q, a) in enumerate(QA)],
            "fvlm_mc": [{"id": f"mc{i}", "video": f"{v}.mp4", "question": q, "options": o, "answer": a}
                        for i, (v, q, o, a) in enumerate(MC)]}
    for task, (prefix, _, tokens, metric) in TASKS.items():
        (folder / f"{task}.json").write_text(json.dumps(docs[task]))
        _write_yaml(folder / f"{task}.yaml", _task_yaml(task, folder / f"{task}.json", prefix, tokens, metric))
    return folder


def _utils(tasks: Path) -> Any:
    spec = importlib.util.spec_from_file_location("fvlm_task_utils", tasks / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lmms_eval(args: list[str], home: Path, launcher: tuple[str, ...] = (),
              timeout: int = 900) -> subprocess.CompletedProcess:
    """`python [-m launcher] -m lmms_eval ...` with this checkout's fastervlm, offline, one thread per process (as
    the reference answers)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "HF_HOME": str(home / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *launcher, "-m", "lmms_eval", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _samples(out: Path, task: str) -> list[dict[str, Any]]:
    (path,) = out.rglob(f"*_samples_{task}.jsonl")
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])


def test_lmms_eval_finds_the_plugin_through_its_entry_point() -> None:
    from lmms_eval.models import get_model

    from fastervlm.integrations.lmms_eval import FasterVLM

    assert get_model("fastervlm") is FasterVLM, "the entry point is missing: reinstall (pip install -e '.[lmms-eval]')"


@dataclass
class Evaluated:
    """One `python -m lmms_eval --config` over the local tasks: each comparison run's output folder, then a run of a
    log-likelihood task that must be refused (lmms-eval reports a failed run and goes on to the next)."""

    runs: list[tuple[Path, str, dict[str, Any]]]
    """(checkpoint, model_args, method settings) of each comparison run; run i wrote into `out / f"run{i}"`."""
    out: Path
    output: str


@pytest.fixture(scope="module")
def evaluated(tasks: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    onevision = checkpoint("llava_onevision", tmp_path_factory)
    tower = tiny_checkpoint.parent / TOWER_DIR
    runs = [  # (checkpoint, model_args after pretrained, method settings, --batch_size)
        (tiny_checkpoint, f"video_tower={tower},method=fastervlm,reduction=0.5",
         dict(method="fastervlm", reduction=0.5), 1),
        (tiny_checkpoint, "method=fastv,reduction=0.5", dict(method="fastv", reduction=0.5), 2),
        (onevision, "method=fastervlm,reduction=0.5,score=received",
         dict(method="fastervlm", reduction=0.5, score="received"), 2),
        (onevision, "method=fastv,keep=4", dict(method="fastv", keep=4), 1),
    ]
    out = tmp_path_factory.mktemp("lmms_runs")
    config = [{"model": "fastervlm", "model_args": f"pretrained={path},{args}", "tasks": ",".join(TASKS),
               "include_path": str(tasks), "device": "cpu", "batch_size": size, "limit": 4, "log_samples": True,
               "output_path": str(out / f"run{i}")} for i, (path, args, _, size) in enumerate(runs)]
    ppl = _task_yaml("fvlm_mcppl", tasks / "fvlm_mc.json", "mc", 3, "acc")
    ppl.update(output_type="multiple_choice", doc_to_choice="options", doc_to_target=0)
    for key in ("generation_kwargs", "process_results"):
        ppl.pop(key)
    _write_yaml(tasks / "fvlm_mcppl.yaml", ppl)
    config.append({**config[0], "tasks": "fvlm_mcppl", "limit": 1, "output_path": str(out / "refused")})
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    done = lmms_eval(["--config", str(out / "config.yaml")], out)
    return Evaluated([(path, args, settings) for path, args, settings, _ in runs], out, done.stdout + done.stderr)


def test_lmms_eval_answers_equal_pipeline_answers(evaluated: Evaluated, tasks: Path) -> None:
    assert evaluated.output.count("Error during evaluation") == 1, evaluated.output[-4000:]  # the refused run only
    utils = _utils(tasks)
    torch.set_num_threads(1)
    texts = set()
    for i, (path, _, settings) in enumerate(evaluated.runs):
        pipeline = fastervlm.load(path, device="cpu")
        for task, (prefix, items, tokens, _) in TASKS.items():
            samples = _samples(evaluated.out / f"run{i}", task)
            assert [s["doc_id"] for s in samples] == list(range(len(items)))
            docs = json.loads((tasks / f"{task}.json").read_text())
            for sample in samples:
                doc = docs[sample["doc_id"]]
                prompt = getattr(utils, f"{prefix}_doc_to_text")(doc)
                assert sample["input"] == prompt
                expected = pipeline.answer(prompt, video=tasks / "videos" / doc["video"],
                                           generation=GenerationSettings(max_new_tokens=tokens), **settings)
                assert STOP not in expected.text
                assert sample["filtered_resps"] == expected.text, (i, task, doc["id"])
                assert sample["token_counts"] == [{"input_tokens": expected.prompt_tokens,
                                                   "output_tokens": len(expected.output_ids)}]
                texts.add(expected.text)
    assert len(texts) > 4  # the comparison is between answers that differ from item to item and run to run


def test_lmms_eval_refuses_log_likelihood_tasks_with_a_clear_error(evaluated: Evaluated) -> None:
    assert "task fvlm_mcppl scores answers by log-likelihood" in evaluated.output, evaluated.output[-4000:]
    assert "run the task's generation variant" in evaluated.output
    assert not list((evaluated.out / "refused").rglob("*_samples_*.jsonl"))


@pytest.mark.distributed
def test_two_processes_under_torchrun_answer_as_one_does(evaluated: Evaluated, tasks: Path, tmp_path: Path) -> None:
    """lmms-eval shards the docs over the ranks (WORLD_SIZE): each process loads the model once and answers its
    share; the merged samples equal the single-process run's."""
    path, args, _ = evaluated.runs[2]
    done = lmms_eval(["--model", "fastervlm", "--model_args", f"pretrained={path},{args}", "--tasks", "fvlm_qa",
                      "--include_path", str(tasks), "--limit", "4", "--log_samples", "--output_path", str(tmp_path)],
                     tmp_path, launcher=("-m", "torch.distributed.run", "--nproc_per_node", "2"))
    output = done.stdout + done.stderr
    assert "Error during evaluation" not in output, output[-4000:]
    single = {s["doc_id"]: s["filtered_resps"] for s in _samples(evaluated.out / "run2", "fvlm_qa")}
    assert {s["doc_id"]: s["filtered_resps"] for s in _samples(tmp_path, "fvlm_qa")} == single


def test_a_torchvision_built_for_another_torch_is_named_with_the_fix(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fastervlm.integrations.lmms_eval import check_torchvision

    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    with pytest.raises(FasterVLMError, match=r"torchvision::nms does not exist\): install the build that matches "
                                             r"torch .*pip uninstall torchvision"):
        check_torchvision()
