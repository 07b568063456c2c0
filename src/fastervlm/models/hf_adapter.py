"""The part of a transformers-format adapter that every family shares: loading with the model's own class,
per-frame preprocessing with the checkpoint's saved image processor, the prompt (the checkpoint's chat template,
else the model card's format) and generation with pruning installed around transformers' own `generate`.

A family file subclasses `HFAdapter`, names its transformers class, describes its `VisualStream`s and registers
itself; `fastervlm.apply` finds the same class from a loaded model's config. Not an adapter itself (nothing
registers it), so adapters may import it.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, GenerationConfig
from transformers import logging as hf_logging

from fastervlm.errors import CheckpointError, FasterVLMError
from fastervlm.methods.base import LLMPruner, Pruner
from fastervlm.models import base
from fastervlm.models.base import Generated, GenerationSettings, ModelAdapter
from fastervlm.models.generation import StepClock, generation_config, until_eos
from fastervlm.models.hf_common import HFPruning, VisualStream
from fastervlm.timing import StageTimer

FrameProcessor = Callable[[list[np.ndarray]], torch.Tensor]


class HFAdapter(ModelAdapter):
    """A transformers VLM checkpoint (config.json with text_config/vision_config, safetensors, tokenizer)."""

    model_class: ClassVar[str]
    """transformers class that loads it, e.g. "VideoLlavaForConditionalGeneration"."""
    model_types: ClassVar[tuple[str, ...]]
    prompt_format: ClassVar[str]
    """The model card's prompt, used when the checkpoint has no chat template; {question} is filled in."""
    default_frames: ClassVar[int] = 8
    unpruned_inputs: ClassVar[tuple[str, ...]] = ()
    """Pixel arguments of the model that pruning does not handle (refused while a method prunes)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        frame_processor: FrameProcessor,
        generation_defaults: GenerationConfig,
        *,
        chat_template: str | None,
        keep_cls: bool,
        num_frames: int,
    ) -> None:
        self.model, self.tokenizer, self.frame_processor = model, tokenizer, frame_processor
        self.generation_defaults = generation_defaults
        self.keep_cls = keep_cls
        self.num_frames = num_frames
        self.stream = next(s for s in self.streams(model) if s.modality == self.media)
        self.num_patches = self.stream.tokens_per_frame
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.chat_template = chat_template

    # ----- what a family provides --------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def streams(cls, model: nn.Module) -> list[VisualStream]:
        """The model's visual inputs: which tower, projector and placeholder id each uses."""

    @classmethod
    def frame_processor(cls, path: Path) -> FrameProcessor:
        """Per-frame preprocessing from the checkpoint's preprocessor_config.json, PIL backend (no torchvision)."""
        try:
            processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot read the image processor in {path} ({err}); copy preprocessor_config.json "
                                  "from the checkpoint.") from err
        return lambda frames: _pixel_values(processor(images=frames, return_tensors="pt"))

    # ----- detection and loading ---------------------------------------------------------------------------------
    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        """A transformers-format config of one of `model_types` (original-format LLaVA configs are flat Llama
        configs with mm_* fields and no text_config, so they never match)."""
        return (
            config.get("model_type") in cls.model_types
            and "text_config" in config
            and not any(key.startswith("mm_") for key in config)
        )

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        keep_cls: bool = False,
        num_frames: int | None = None,
    ) -> HFAdapter:
        """from_pretrained with SDPA; fp32 on CPU whatever the checkpoint says, the checkpoint's dtype on CUDA.

        keep_cls: feed each frame's [CLS] token to the LLM where the stock model does (Video-LLaVA-hf videos).
        num_frames: frames sampled per video (default 8).
        """
        import transformers

        if cls.media == "image" and num_frames not in (None, 1):
            raise FasterVLMError(f"--num-frames does not apply to {cls.family}, an image model; leave it out.")
        model_class = getattr(transformers, cls.model_class)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model, info = model_class.from_pretrained(
                path,
                dtype=dtype or (torch.float32 if device.type == "cpu" else "auto"),
                attn_implementation="sdpa",
                output_loading_info=True,
            )
        except OSError as err:
            raise CheckpointError(
                f"cannot load {path} as {cls.model_class} ({err}); check that the weights are complete."
            ) from err
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        if info.get("missing_keys"):
            raise CheckpointError(f"{path} lacks weights {sorted(info['missing_keys'])[:5]}; finish the download.")
        has_defaults = (path / "generation_config.json").is_file()
        generation = GenerationConfig.from_pretrained(path) if has_defaults else GenerationConfig()
        # Decoding settings come from GenerationSettings alone; the checkpoint's max_length etc. must not leak in.
        text = model.config.text_config
        model.generation_config = GenerationConfig(
            bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id
        )
        tokenizer = _load_tokenizer(path)
        return cls(
            model.to(device).eval(),
            tokenizer,
            cls.frame_processor(path),
            generation,
            chat_template=tokenizer.chat_template or _processor_chat_template(path),
            keep_cls=keep_cls,
            num_frames=1 if cls.media == "image" else (num_frames or cls.default_frames),
        )

    # ----- applying to a loaded model ----------------------------------------------------------------------------
    @classmethod
    def pruning(cls, model: nn.Module, pruner: Pruner, *, keep_cls: bool = False) -> HFPruning:
        """The method set up for `model` (not yet installed): `.install()`, or use it as a context manager."""
        pad = model.config.text_config.pad_token_id
        return HFPruning(
            model,
            cls.streams(model),
            pruner,
            decoder=model.model.language_model,
            keep_cls=keep_cls,
            unpruned_inputs=cls.unpruned_inputs,
            pad_token_id=pad if pad is not None else 0,
        )

    # ----- the pipeline contract -----------------------------------------------------------------------------------
    def preprocess(self, frames: np.ndarray, *, flip: bool = False) -> torch.Tensor:
        if flip:
            frames = frames[:, :, ::-1]
        return self.frame_processor(list(np.ascontiguousarray(frames)))

    @torch.inference_mode()
    def generate(
        self,
        pixels: torch.Tensor,
        questions: list[str],
        pruner: Pruner,
        settings: GenerationSettings,
        timer: StageTimer,
    ) -> list[Generated]:
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        if self.media == "image":
            pixels = pixels[:, 0]
        frames = pixels.shape[1] if self.media == "video" else 1
        input_ids, attention_mask = self.prompt_batch(questions, self.stream.stock_tokens(frames))
        clock = StepClock(self.device)
        torch.manual_seed(settings.seed)
        with self.pruning(self.model, pruner, keep_cls=self.keep_cls) as pruning:
            pruning.timer, pruning.clock = timer, clock
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **{self.stream.pixel_key: pixels},
                generation_config=generation_config(settings, self.tokenizer, self.generation_defaults),
                logits_processor=[clock],
            )
        clock.report(timer)
        llm_budget = isinstance(pruner, LLMPruner) and pruner.prunes  # FastV: count what layers >= K keep
        results = []
        for row, record, length in zip(out[:, input_ids.shape[1]:].tolist(), pruning.records,
                                       pruning.attention_mask.sum(1).tolist()):
            ids = until_eos(row, self.tokenizer.eos_token_id)
            results.append(Generated(
                text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                output_ids=ids,
                prompt_tokens=int(length),
                visual_tokens=pruner.kept_visual_tokens(frames, self.num_patches) if llm_budget else record.visual_tokens,
                kept_indices=record.kept_indices,
                cls_scores=record.cls_scores,
            ))
        return results

    # ----- prompts -------------------------------------------------------------------------------------------------
    def prompt_text(self, question: str) -> str:
        """The checkpoint's chat template when it has one, else the model card's format."""
        if self.chat_template is None:
            return self.prompt_format.format(question=question)
        messages = [{"role": "user", "content": [{"type": self.media}, {"type": "text", "text": question}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )

    def prompt_ids(self, question: str, placeholders: int) -> list[int]:
        """Token ids of one prompt with its one placeholder expanded to `placeholders` copies (as the processor does)."""
        text = self.prompt_text(question)
        bos = self.tokenizer.bos_token
        ids = self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids
        token = self.stream.token_id
        if ids.count(token) != 1:
            raise CheckpointError(
                f"the {self.family} prompt {text!r} tokenises to {ids.count(token)} placeholder ids {token}, not one; "
                "the tokenizer must carry the model's image/video token as a special token."
            )
        at = ids.index(token)
        return ids[:at] + [token] * placeholders + ids[at + 1:]

    def prompt_batch(self, questions: list[str], placeholders: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input_ids and attention_mask for a batch of questions."""
        rows = [self.prompt_ids(question, placeholders) for question in questions]
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return ids.to(self.device), mask.to(self.device)


def hf_families() -> list[type[HFAdapter]]:
    """The registered transformers-format families, in registration order (apply() has a model, not a path)."""
    return [cls for cls in base.registered_adapters() if issubclass(cls, HFAdapter)]


def hf_adapter_for(config: dict[str, Any]) -> type[HFAdapter] | None:
    """The registered transformers-format family that claims this config, if any."""
    return next((cls for cls in hf_families() if cls.matches(config)), None)


def _pixel_values(output: Any) -> torch.Tensor:
    """pixel_values of an image processor's output (VideoLlavaImageProcessor's legacy key included)."""
    for key in ("pixel_values", "pixel_values_images"):
        if key in output:
            return output[key]
    raise CheckpointError(f"the image processor returned {sorted(output)} and no pixel_values.")


def _load_tokenizer(path: Path) -> Any:
    try:
        return AutoTokenizer.from_pretrained(path)
    except (ImportError, ValueError, OSError) as err:
        raise CheckpointError(
            f"could not read the tokenizer in {path} ({err}); copy the tokenizer files from the checkpoint."
        ) from err


def _processor_chat_template(path: Path) -> str | None:
    """A chat template saved with the processor (chat_template.json or chat_template.jinja), if any."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None
