"""The part of a transformers-format family that every such family shares: its visual streams read from the loaded
model, loading with the model's own class, per-frame preprocessing with the checkpoint's saved image processor,
and the prompt (the checkpoint's chat template, else the model card's format).

A family file subclasses `HFAdapter`, names its transformers class, describes its `HFStream`s and registers
itself; `fastervlm.apply` finds the same class from a loaded model's config. Not an adapter itself (nothing
registers it), so adapters may import it.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from fastervlm.errors import CheckpointError, FasterVLMError, UnsupportedModelError
from fastervlm.models import base
from fastervlm.models.base import Modality, ModelAdapter, PromptPiece, VisualSlot, feature_layer_index
from fastervlm.models.grid_stream import GridStream
from fastervlm.models.loading import (generation_defaults, load_tokenizer, neutral_generation_config, placement,
                                      quiet_transformers)
from fastervlm.models.checkpoint import Part, check_transformers_checkpoint, read_json, vlm_parts

FrameProcessor = Callable[[list[np.ndarray]], torch.Tensor]


@dataclass
class TinyParts:
    """The pieces of a tiny random checkpoint every transformers family builds its config from (fastervlm.tiny.hf):
    the Llama text config, a CLIP vision config, the placeholder token ids, the patches per frame, the frames."""

    text: dict[str, Any]
    clip: dict[str, Any]
    ids: dict[str, int]
    patches: int
    frames: int
    image_size: int


def vision_body(tower: nn.Module) -> nn.Module:
    """The module holding `embeddings` and `encoder` (SigLIP-style towers wrap it in `vision_model`)."""
    return getattr(tower, "vision_model", tower)


@dataclass
class HFStream(GridStream):
    """One kind of visual input of a transformers VLM (its videos, or its images) and where its pieces live.

    first_token_fed: the stock model feeds the feature layer's first token to the LLM (Video-LLaVA-hf videos,
    or vision_feature_select_strategy "full"); for a CLIP tower that token is the frame's [CLS].
    as_list: the model reads `pooler_output` as one tensor per item (LLaVA, NeXT) rather than one tensor.
    """

    modality: Modality
    pixel_key: str
    token_id: int
    tower: nn.Module
    projector: nn.Module
    feature_layer: Any
    first_token_fed: bool
    as_list: bool

    @property
    def has_cls(self) -> bool:
        return hasattr(vision_body(self.tower).embeddings, "class_embedding")

    @property
    def grid(self) -> int:
        """Patches per frame out of the tower."""
        config = self.tower.config
        return (config.image_size // config.patch_size) ** 2

    @property
    def tokens_per_frame(self) -> int:
        return self.grid

    def _feature_layer(self) -> int:
        return feature_layer_index(len(vision_body(self.tower).encoder.layers), self.feature_layer, "vision_feature_layer")

    def feature_attention(self) -> nn.Module:
        return vision_body(self.tower).encoder.layers[self._feature_layer()].self_attn

    @property
    def layers_run(self) -> int:  # transformers runs the whole tower whatever the feature layer
        return len(vision_body(self.tower).encoder.layers)

    def hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixels.flatten(0, 1), output_hidden_states=self.feature_layer, return_dict=True)
        return out.hidden_states[self.feature_layer].unflatten(0, pixels.shape[:2])

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.projector(tokens)

    def stock_tokens(self, frames: int) -> int:
        """Placeholders per item in a stock prompt (what the model's processor expands one placeholder to)."""
        trailing = self.trailing_tokens()
        feeds_cls = self.has_cls and self.first_token_fed
        return frames * (self.tokens_per_frame + int(feeds_cls)) + (0 if trailing is None else len(trailing))

    def inputs(self, call: dict[str, Any]) -> list[torch.Tensor]:
        """The call's pixels of this stream (popped) -> (frames, 3, H, W) per item, as `encode` takes them."""
        pixels = call.pop(self.pixel_key)
        return list(pixels[:, None] if self.modality == "image" else pixels)

    def placeholder_runs(self, kept: list[Any]) -> tuple[list[int], list[int]]:
        """Each item's placeholder run in the stock prompt, and what it holds after pruning (`KeptTokens`)."""
        return [self.stock_tokens(item.selection.frames) for item in kept], [len(item.item()) for item in kept]

    def package(self, kept: list[Any]) -> BaseModelOutputWithPooling:
        """Kept tokens per item (`KeptTokens`) -> the encoder output the model's forward reads (`pooler_output`)."""
        items = [item.item() for item in kept]
        return BaseModelOutputWithPooling(pooler_output=items if self.as_list else torch.cat(items)[None])

    def check(self) -> None:
        """Refuse layouts whose stock tokens this code cannot reproduce."""
        if not isinstance(self.feature_layer, int):
            raise UnsupportedModelError(
                f"vision_feature_layer {self.feature_layer!r} concatenates several layers; fastervlm supports one "
                "feature layer (an int, -2 in every released checkpoint)."
            )
        if not self.has_cls and not self.first_token_fed:
            raise UnsupportedModelError(
                "this model drops the first token of a vision encoder that has no [CLS] token "
                "(vision_feature_select_strategy 'default'); fastervlm supports 'full' for such encoders."
            )


class HFAdapter(ModelAdapter):
    """A transformers VLM checkpoint (config.json with text_config/vision_config, safetensors, tokenizer)."""

    model_class: ClassVar[str]
    """transformers class that loads it, e.g. "VideoLlavaForConditionalGeneration"."""
    model_types: ClassVar[tuple[str, ...]]
    """transformers model_type values it claims; the first names the family (llava_next_video: llava-next-video-hf)."""
    default_frames: ClassVar[int] = 8
    unpruned_inputs: ClassVar[tuple[str, ...]] = ()
    checkpoint_parts: ClassVar[Callable[[dict[str, Any]], tuple[Part, ...]]] = staticmethod(vlm_parts)
    """The networks config.json describes, checked against the weights before loading (`models.checkpoint`)."""
    """Pixel arguments of the model that pruning does not handle (refused while a method prunes)."""
    processor_options: ClassVar[dict[str, Any]] = {}
    """Keyword arguments for the image processor call (the current form of deprecated defaults)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model_types" in vars(cls):
            cls.family = cls.model_types[0].replace("_", "-") + "-hf"

    @property
    def prompt_format(self) -> str:
        """The llava-hf model cards' prompt, used when the checkpoint has no chat template; {question} is filled in."""
        return f"USER: <{self.media}>\n{{question}} ASSISTANT:"

    def __init__(self, model: nn.Module, tokenizer: Any, frame_processor: FrameProcessor, generation: Any, *,
                 chat_template: str | None, keep_cls: bool, num_frames: int) -> None:
        self.model, self.llm, self.tokenizer, self.frame_processor = model, model, tokenizer, frame_processor
        self.decoder, self.llm_config = self.decoder_of(model), model.config.text_config
        self.generation_defaults, self.chat_template = generation, chat_template
        self.keep_cls, self.num_frames = keep_cls, num_frames
        self.stream = next(s for s in self.streams(model) if s.modality == self.media)
        self.stream.check()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    # ----- what a family provides --------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def streams(cls, model: nn.Module) -> list[HFStream]:
        """The model's visual inputs: which tower, projector and placeholder id each uses."""

    @classmethod
    def decoder_of(cls, model: nn.Module) -> nn.Module:
        """The model's Llama-style decoder (where FastV attaches)."""
        return model.model.language_model

    @classmethod
    def stock_positions(cls, model: nn.Module, call: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For models with multi-axis positions (M-RoPE): the stock positions (P, B, S) of a call's whole prompt
        and its rope deltas (B, 1), which `fastervlm.apply` gathers at the kept tokens; None for 1-D positions."""
        return None

    @classmethod
    def continue_from(cls, model: nn.Module, rope_deltas: torch.Tensor) -> None:
        """Where the model's own decoding steps continue after a shrunk prompt (M-RoPE models keep a rope delta)."""

    @classmethod
    def frame_processor(cls, path: Path) -> FrameProcessor:
        """Per-frame preprocessing from the checkpoint's preprocessor_config.json, PIL backend (no torchvision)."""
        if (path / "preprocessor_config.json").is_file():
            read_json(path / "preprocessor_config.json")
        try:
            processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"cannot read the image processor in {path} ({err}); copy preprocessor_config.json "
                                  "from the checkpoint.") from err
        return lambda frames: _pixel_values(processor(images=frames, return_tensors="pt", **cls.processor_options))

    @classmethod
    @abstractmethod
    def tiny_config(cls, parts: TinyParts) -> Any:
        """The family's tiny spec: its config built with transformers' own config class from `parts`."""

    @classmethod
    def write_tiny_processor(cls, folder: Path, frame: dict[str, Any], parts: TinyParts) -> None:
        """The preprocessing files (and chat template) the real checkpoint ships, with per-frame `frame` settings."""
        write_json(folder / "preprocessor_config.json",
                    {"image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor", **frame})

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
    def load(cls, path: Path, *, device: torch.device, dtype: torch.dtype | None, keep_cls: bool = False,
             num_frames: int | None = None) -> HFAdapter:
        """from_pretrained with SDPA; fp32 on CPU whatever the checkpoint says, the checkpoint's dtype on CUDA.

        keep_cls: feed each frame's [CLS] token to the LLM where the stock model does (Video-LLaVA-hf videos).
        num_frames: frames sampled per video (default 8).
        """
        import transformers

        if cls.media == "image" and num_frames not in (None, 1):
            raise FasterVLMError(f"--num-frames does not apply to {cls.family}, an image model; leave it out.")
        # a clear error for damaged files, sizes that disagree with the weights
        check_transformers_checkpoint(path, cls.checkpoint_parts)
        try:
            with quiet_transformers():
                model, info = getattr(transformers, cls.model_class).from_pretrained(
                    path, dtype=dtype or (torch.float32 if device.type == "cpu" else "auto"),
                    attn_implementation="sdpa", output_loading_info=True, **placement(device))
        except OSError as err:
            raise CheckpointError(
                f"cannot load {path} as {cls.model_class} ({err}); check that the weights are complete."
            ) from err
        if info.get("missing_keys"):
            raise CheckpointError(f"{path} lacks weights {sorted(info['missing_keys'])[:5]}; finish the download.")
        model.generation_config = neutral_generation_config(model.config.text_config)
        return cls.around(model.to(device).eval(), path, keep_cls=keep_cls, num_frames=num_frames)

    @classmethod
    def around(cls, model: nn.Module, path: Path, *, keep_cls: bool = False, num_frames: int | None = None) -> HFAdapter:
        """The adapter of an already loaded `model` whose tokenizer and preprocessing files are in folder `path`."""
        tokenizer = load_tokenizer(path, vocab_size=model.config.text_config.vocab_size, config=model.config)
        try:
            frame_processor = cls.frame_processor(path)
        except (ValueError, TypeError, KeyError, AttributeError) as err:  # a setting of the wrong kind
            raise _preprocessing_error(path, err) from err
        adapter = cls(model, tokenizer, frame_processor, generation_defaults(path),
                      chat_template=tokenizer.chat_template or _processor_chat_template(path), keep_cls=keep_cls,
                      num_frames=1 if cls.media == "image" else (num_frames or cls.default_frames))
        _try_once(adapter, path)
        return adapter

    # ----- the engine contract -----------------------------------------------------------------------------------
    def preprocess(self, frames: np.ndarray, *, flip: bool = False) -> torch.Tensor:
        if flip:
            frames = frames[:, :, ::-1]
        return self.frame_processor(list(np.ascontiguousarray(frames)))

    def prompt_text(self, question: str) -> str:
        """The checkpoint's chat template when it has one, else the model card's format."""
        if self.chat_template is None:
            return self.prompt_format.format(question=question)
        messages = [{"role": "user", "content": [{"type": self.media}, {"type": "text", "text": question}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )

    def prompt(self, question: str, visual: Any = None) -> list[PromptPiece]:
        """The prompt's ids with its one placeholder token as a slot for every frame's kept tokens."""
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
        return [ids[:at], VisualSlot(0, self.num_frames), ids[at + 1:]]

    def processor_batch(self, questions: list[str], *, videos: list[Any] | None = None,
                        images: list[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        """What the model's processor returns for one question per decoded video (`pipeline.Frames`) or uint8
        (H, W, 3) image (`fastervlm.processor_inputs`)."""
        if (videos is not None and self.media == "image") or (images is not None and self.media == "video"):
            given = "a video" if videos is not None else "an image"
            raise FasterVLMError(f"{self.family} answers questions about {self.media}s, not {given}.")
        if videos is not None:
            pixels = torch.stack([frames.pixels for frames in videos])
        else:
            pixels = torch.cat([self.preprocess(image[None]) for image in images])  # one frame per image
        input_ids, attention_mask = self.prompt_batch(questions)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                self.stream.pixel_key: pixels.to(self.device, self.dtype)}

    def prompt_batch(self, questions: list[str], placeholders: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input_ids and attention_mask as the model's processor builds them: each prompt's placeholder
        repeated `placeholders` times (default: the stock count for this adapter's frames). This is what the stock
        model, or a model with `fastervlm.apply`, takes with the pixels."""
        count = self.stream.stock_tokens(self.num_frames) if placeholders is None else placeholders
        rows = [[token for piece in self.prompt(question)
                 for token in ([self.stream.token_id] * count if isinstance(piece, VisualSlot) else piece)]
                for question in questions]
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return ids.to(self.device), mask.to(self.device)


def require_select_strategy(config: Any, strategy: str, model: str) -> None:
    """Refuse a vision_feature_select_strategy other than `strategy`: the families that pool need the whole square
    patch grid, which only that strategy hands over."""
    if config.vision_feature_select_strategy != strategy:
        raise UnsupportedModelError(
            f"{model} with vision_feature_select_strategy {config.vision_feature_select_strategy!r} is not supported: "
            f"its pooling needs the square patch grid of {strategy!r}, which every released checkpoint uses."
        )


def hf_families() -> list[type[HFAdapter]]:
    """The registered transformers-format families, in registration order (apply() has a model, not a path)."""
    return [cls for cls in base.registered_adapters() if issubclass(cls, HFAdapter)]


def hf_adapter_for(config: dict[str, Any]) -> type[HFAdapter] | None:
    """The registered transformers-format family that claims this config, if any."""
    return next((cls for cls in hf_families() if cls.matches(config)), None)


def _pixel_values(output: Any) -> torch.Tensor:
    """pixel_values of an image processor's output."""
    if "pixel_values" in output:
        return output["pixel_values"]
    raise CheckpointError(f"the image processor returned {sorted(output)} and no pixel_values.")


FRAME_SETTINGS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                  "do_normalize", "image_mean", "image_std", "do_convert_rgb")
"""Settings of a video frame's preprocessing (resize, centre crop, rescale, normalise)."""


def saved_frame_settings(path: Path, files: tuple[str, ...]) -> dict[str, Any]:
    """The per-frame preprocessing settings (`FRAME_SETTINGS`) of the first of `files` the checkpoint holds: for
    families whose saved video processor needs torchvision, or whose image processor is an anyres one."""
    for name in files:
        file = path / name
        if file.is_file():
            return {key: value for key, value in read_json(file).items() if key in FRAME_SETTINGS}
    raise CheckpointError(f"{path} has none of {', '.join(files)}: copy the checkpoint's preprocessor files.")


def write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2))


def _processor_chat_template(path: Path) -> str | None:
    """A chat template saved with the processor (chat_template.json or chat_template.jinja), if any."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        template = read_json(path / "chat_template.json").get("chat_template")
        if not isinstance(template, str):
            raise CheckpointError(f"{path / 'chat_template.json'} holds no chat_template text: re-download it.")
        return template
    return None


def _try_once(adapter: HFAdapter, path: Path) -> None:
    """One blank frame through the preprocessing and one question through the chat template, at load: a setting or
    template that does not work fails now, naming its files, instead of at the first answer."""
    import jinja2

    try:
        adapter.preprocess(np.zeros((1, 16, 16, 3), dtype=np.uint8))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise _preprocessing_error(path, err) from err
    try:
        adapter.prompt_text("?")
    except jinja2.TemplateError as err:
        where = next((path / name for name in ("chat_template.jinja", "chat_template.json") if (path / name).is_file()),
                     path / "tokenizer_config.json")
        raise CheckpointError(f"the chat template in {where} does not work ({type(err).__name__}: {err}): "
                              "re-download it.") from err


def _preprocessing_error(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"the preprocessing settings in {path} do not work ({type(err).__name__}: {err}): "
                           "re-download its preprocessor_config.json (and video_preprocessor_config.json).")
