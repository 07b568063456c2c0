"""fastervlm as an lmms-eval model: any lmms-eval task, answered with visual tokens pruned by any method.

    pip install -e ".[lmms-eval]"
    python -m lmms_eval --model fastervlm \\
        --model_args pretrained=ckpts/llava-onevision-qwen2-7b-ov-hf,method=visionzip,reduction=0.9 --tasks videomme

lmms-eval finds the model through the entry-point group `lmms_eval.models` that pyproject.toml declares
(`manifest` below): installing fastervlm beside lmms-eval is all it takes, no copy of lmms-eval's code. Requests are
answered by `integrations.batched` (each video decoded, encoded and prepared once, its questions asked in batches).
docs/lmms-eval.md lists the model_args. This is the only module that imports lmms_eval; `import fastervlm` never
loads it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from fastervlm.errors import FasterVLMError

if TYPE_CHECKING:
    from fastervlm.integrations.batched import Request

MODEL_NAME = "fastervlm"


def manifest() -> ModelManifest:
    """The entry point lmms-eval loads (group `lmms_eval.models`): `--model fastervlm` is `FasterVLM`."""
    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.{FasterVLM.__name__}")


class FasterVLM(lmms):
    """A fastervlm checkpoint with one pruning configuration, answering lmms-eval's generation requests."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, method: str | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size: int | str | None = None, max_batch_size: int | None = None,
                 **options: Any) -> None:
        """model_args: pretrained (checkpoint folder), method, the method's settings and budget (keep= or
        reduction=), the family's load options (video_tower=, num_frames=, keep_cls=), device, dtype (auto: the
        default). lmms-eval's --batch_size (N or auto) sets the questions per LLM call; its max_batch_size (for
        its own auto search) has no use here."""
        super().__init__()
        import fastervlm
        from fastervlm.eval.grouped import default_batch_size
        from fastervlm.integrations import model_args

        check_torchvision()
        if pretrained is None:
            raise FasterVLMError("--model_args needs pretrained=<checkpoint folder>, e.g. --model_args "
                                 "pretrained=ckpts/Video-LLaVA-7B-hf,method=fastervlm,reduction=0.9")
        settings, load_options = model_args.split_options(pretrained, method, options)
        device = self._processes(device)
        self.pipeline = fastervlm.load(pretrained, device=device, dtype=None if dtype == "auto" else dtype,
                                       **load_options)
        self.pruner = self.pipeline.pruner(method, **settings)
        adapter = self.pipeline.adapter
        self.questions_per_call = model_args.batch_size(batch_size, default_batch_size(adapter.device, adapter.dtype))

    @property
    def device(self) -> Any:
        """The model's device (lmms-eval gathers its per-rank counts there)."""
        return self.pipeline.adapter.device

    def _processes(self, device: str | None) -> str | None:
        """One process per GPU under torchrun or accelerate launch: this process's rank and GPU (lmms-eval shards
        the docs by rank)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return device
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        return device or str(self.accelerator.device)

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Every request answered through the engine, grouped by video and batched; texts cut at the task's `until`."""
        from fastervlm.integrations.batched import answer_requests, cut_at_stop

        asked = self._requests(requests)
        with tqdm(total=len(asked), desc="fastervlm", disable=self.rank != 0) as bar:
            answers = answer_requests(self.pipeline, self.pruner, asked, self.questions_per_call, bar.update)
        results = []
        for instance, request, answer in zip(requests, asked, answers):
            text = cut_at_stop(answer.text, request.stop)
            self.cache_hook.add_partial("generate_until", instance.args[:2], text)
            results.append(GenerationResult(text, TokenCounts(input_tokens=answer.prompt_tokens,
                                                              output_tokens=len(answer.output_ids))))
        return results

    def _requests(self, requests: list[Instance]) -> list[Request]:
        """lmms-eval's generation requests as fastervlm's: the doc's visuals, the prompt, the decoding settings.

        A task whose first doc hands over video paths has every doc's visuals read now (paths: cheap, and grouping
        by video needs them); a task that hands over images (decoded by the task itself) is read one doc at a time
        as its turn comes, so that no more than the inputs in flight are held."""
        from fastervlm.integrations.batched import Deferred, Request, VideoFile, labelled
        from fastervlm.integrations.model_args import generation_settings

        by_paths: dict[tuple[str, str], bool] = {}
        out = []
        for instance in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = _generation_arguments(instance)
            label = f"task {task}, doc {doc_id}"
            doc = self.task_dict[task][split][doc_id]
            generation, stop = labelled(label, lambda: generation_settings(dict(gen_kwargs or {})))
            if by_paths.get((task, split), True):
                visual = labelled(label, lambda: _doc_visual(doc_to_visual, doc))
                by_paths.setdefault((task, split), isinstance(visual, VideoFile))
            else:
                visual = Deferred((task, split, doc_id), _deferred(doc_to_visual, doc, label))
            out.append(Request(visual, context, generation, stop, label))
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        task = requests[0].task_name if requests else "this task"
        raise FasterVLMError(
            f"task {task} scores answers by log-likelihood (output_type: multiple_choice or loglikelihood, e.g. the "
            "*_mcppl tasks); fastervlm's lmms-eval model answers by generation only: run the task's generation "
            "variant (e.g. egoschema instead of egoschema_mcppl), which asks with the options in the prompt."
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        task = requests[0].task_name if requests else "this task"
        raise FasterVLMError(f"task {task} is a multi-round conversation; fastervlm's lmms-eval model answers one "
                             "question per request: choose a single-round task.")


def _generation_arguments(instance: Instance) -> tuple:
    """(context, gen_kwargs, doc_to_visual, doc_id, task, split) of a generate_until request."""
    if len(instance.args) != 6:
        raise FasterVLMError(f"task {instance.task_name}: a generate_until request with {len(instance.args)} "
                             "arguments, where this lmms-eval version's have 6; install lmms-eval>=0.7.")
    return instance.args


def _doc_visual(doc_to_visual: Any, doc: Any) -> Any:
    from fastervlm.integrations.batched import visual_from

    return visual_from(doc_to_visual(doc) if doc_to_visual is not None else None)


def _deferred(doc_to_visual: Any, doc: Any, label: str) -> Any:
    from fastervlm.integrations.batched import labelled

    return lambda: labelled(label, lambda: _doc_visual(doc_to_visual, doc))


def check_torchvision() -> None:
    """lmms-eval installs torchvision; one built for another torch (PyPI's CUDA build beside a CPU torch) breaks
    transformers' image processors far from the cause, so it is named here with the fix."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except (RuntimeError, ImportError, OSError) as err:
        import torch

        raise FasterVLMError(
            f"torchvision is installed but does not load with torch {torch.__version__} ({err}): install the build "
            "that matches torch (CPU: pip install torchvision==0.28.0 --index-url "
            "https://download.pytorch.org/whl/cpu), or remove it (pip uninstall torchvision); see docs/lmms-eval.md."
        ) from err
