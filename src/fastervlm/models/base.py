"""The contract between the engine and a model family, and the registry that picks a family from a config.

A family fills two small interfaces and nothing else:
- `VisualStream`: one kind of visual input (a model's videos, or its images): `encode` (the tower to its feature
  layer, giving the candidate tokens a method chooses among, with their grid, LLM positions and the scores or keys
  the method asked for; `models/grid_stream.py` does this for every tower with a q_proj/k_proj feature layer),
  what it `provides`, and the projector;
- `ModelAdapter`: loading and detection, preprocessing (the family's transform and pixel statistics), the prompt
  (text ids with `VisualSlot`s where the kept tokens go), the tokenizer and the LLM (`forward_llm` on input
  embeddings with explicit positions and a cache; a Llama-style decoder for methods that act inside it).
The engine (`fastervlm.engine`) runs encode -> select -> project -> prompt -> generate on any adapter. Adapters
never import each other, cli, eval, bench, show or web. A new family is one file with a registered subclass.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from fastervlm.errors import CheckpointError, FasterVLMError
from fastervlm.methods.base import SEED_RANGE
from fastervlm.models.checkpoint import read_config

if TYPE_CHECKING:
    from fastervlm.frame_times import FrameTimes
    from fastervlm.methods.base import VisualTokens
    from fastervlm.timing import StageTimer

Modality = Literal["video", "image"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The pixel statistics of OpenAI's CLIP, which the CLIP-based towers (LanguageBind, LLaVA's) were trained with."""


@dataclass
class GenerationSettings:
    """How answers are decoded. Greedy by default; `sample=True` reproduces the original's T = 0.1 sampling
    (top_p and top_k from the checkpoint's generation_config.json)."""

    max_new_tokens: int = 1024
    sample: bool = False
    temperature: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse, before any model work, values that would fail deep inside torch or sample garbage."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise FasterVLMError(f"max_new_tokens (--max-new-tokens) must be a whole number of at least 1 (got "
                                 f"{self.max_new_tokens!r}).")
        if self.sample and not (isinstance(self.temperature, (int, float)) and 0 < self.temperature < math.inf):
            raise FasterVLMError(f"temperature (--temperature) must be a finite number above 0 for sampling (got "
                                 f"{self.temperature!r}, e.g. 0.1); leave out sample (--sample) for greedy decoding.")
        low, high = SEED_RANGE
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not low <= self.seed <= high:
            raise FasterVLMError(f"seed (--seed) must be a whole number that fits in 64 bits, from -2**63 to 2**64 - 1 "
                                 f"(got {self.seed!r}).")


@dataclass(frozen=True)
class VisualSlot:
    """A place in a prompt that takes the kept visual tokens of `count` frames starting at frame `first`."""

    first: int
    count: int


PromptPiece = list[int] | VisualSlot
"""A prompt is text token ids and visual slots, in order."""


@dataclass
class EagerExtraction:
    """The [CLS] attention read the original code's way (every layer eager, every attention map returned): the
    yardstick `fastervlm bench` holds our extraction against."""

    features: torch.Tensor
    """(B, T, N, C) candidate tokens of the feature layer."""
    cls_scores: torch.Tensor
    """(B, T, N) the [CLS] row of the feature layer's map, head mean."""
    attention_bytes: int
    """Memory held by the returned attention maps."""
    layers_run: int


@runtime_checkable
class SupportsEagerReference(Protocol):
    """A stream that can also reach its [CLS] scores the original code's way (`fastervlm bench`'s reference row)."""

    def eager_extraction(self, pixels: torch.Tensor) -> EagerExtraction: ...


class VisualStream(ABC):
    """One kind of visual input of a model (its videos, or its images): the tower to its feature layer, the candidate
    tokens a method chooses among, the inputs methods read, and the projector into the LLM's space.

    What a stream can compute for methods is declared in `provides` (input names of fastervlm.methods.base, plus
    FRAME_CLS), so that a method it cannot serve is refused before any work; tests hold every family to what it
    declares.
    """

    modality: Modality

    @property
    @abstractmethod
    def provides(self) -> frozenset[str]:
        """The method inputs `encode` computes on request, and FRAME_CLS when it can feed each frame's [CLS]."""

    @property
    @abstractmethod
    def tokens_per_frame(self) -> int | None:
        """Candidate tokens per frame (the N of `reduction`) when the model fixes them; None when they depend on the
        input (a model that picks its resolution per video)."""

    @abstractmethod
    def encode(self, pixels: list[torch.Tensor], inputs: frozenset[str], timer: StageTimer | None = None, *,
               keep_cls: bool = False, times: list[FrameTimes | None] | None = None) -> list[VisualTokens]:
        """Preprocessed pixels of each input, (T, 3, H, W) each, -> its candidate tokens with the requested
        `inputs`; the [CLS] tokens too with `keep_cls`. `times`: when each input's frames were taken (None:
        unknown), for models whose positions depend on it (Qwen2.5-VL). Times "vision_encoder", "cls_scoring" and
        "projector"."""

    @abstractmethod
    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(K, C) kept tokens -> (K, D) LLM input embeddings (the identity when candidates are projected already)."""

    def trailing_tokens(self) -> torch.Tensor | None:
        """(E, D) tokens in the LLM's space that the stock model appends after each item's visual tokens (LLaVA-
        OneVision's `image_newline` after a video), or None. They are no candidates: every method keeps them,
        right after the item's kept tokens; they are not counted as visual tokens, and LLM-stage methods see
        them as text, so never drop them."""
        return None

    @property
    @abstractmethod
    def layers_run(self) -> int:
        """Encoder layers that run to reach the feature layer (the layers after it never run)."""


FRAME_CLS = "frame_cls"
"""A stream capability: it can feed each frame's [CLS] token to the LLM in front of the frame's tokens, as the stock
model does (Video-LLaVA-hf videos: `keep_cls`)."""


def missing_capability(stream: VisualStream, wanted: frozenset[str]) -> frozenset[str]:
    """What of `wanted` the stream does not provide."""
    return wanted - stream.provides


class ModelAdapter(ABC):
    """One model family. Instances wrap a loaded model; class methods detect and load checkpoints."""

    family: ClassVar[str]
    media: ClassVar[Modality]
    fallback: ClassVar[bool] = False
    """A family that only explains why a checkpoint cannot load: asked after every other family."""
    pixel_mean: ClassVar[tuple[float, float, float]] = OPENAI_CLIP_MEAN
    pixel_std: ClassVar[tuple[float, float, float]] = OPENAI_CLIP_STD
    """The per-channel normalisation `preprocess` applies (OpenAI CLIP's; override for other statistics)."""

    num_frames: int
    """Input frames sampled per video (1 for image models)."""
    stream: VisualStream
    """The visual input the pipeline answers about (the family's `media`)."""
    tokenizer: Any
    llm: nn.Module
    """The causal LM (or the whole VLM) whose forward takes `inputs_embeds`, `attention_mask`, `position_ids` and a
    cache, and returns logits: `forward_llm` calls it."""
    decoder: nn.Module
    """The LLM's Llama-style decoder (`.layers`), where LLM-stage methods attach."""
    llm_config: Any
    """The LLM's config (hidden_size, num_hidden_layers, ...): FLOPs and context length."""
    generation_defaults: Any
    """The checkpoint's generation_config.json (top_p/top_k for sampling), or transformers' defaults."""
    keep_cls: bool = False
    """Feed each frame's [CLS] token in front of its kept tokens, where the stream provides FRAME_CLS."""
    device: torch.device
    dtype: torch.dtype

    @property
    def num_patches(self) -> int | None:
        """Candidate tokens per frame without [CLS] (the N that `reduction` is a fraction of), or None when the
        model picks it per input."""
        return self.stream.tokens_per_frame

    @property
    def max_context(self) -> int | None:
        """The longest prompt the LLM was built for (max_position_embeddings), None when the config does not say."""
        return getattr(self.llm_config, "max_position_embeddings", None)

    @classmethod
    @abstractmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        """Whether a checkpoint's config.json belongs to this family (decided from content, not model_type alone)."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, *, device: torch.device, dtype: torch.dtype | None, **options: Any) -> ModelAdapter:
        """Load the checkpoint at `path`; dtype None means fp32 on CPU, the checkpoint's dtype on CUDA."""

    @abstractmethod
    def preprocess(self, frames: np.ndarray, *, flip: bool = False) -> torch.Tensor:
        """uint8 (T, H, W, 3) frames -> float pixels (T, 3, H', W') as this model's checkpoint expects."""

    @abstractmethod
    def prompt(self, question: str, visual: Any = None) -> list[PromptPiece]:
        """The prompt for one question: text ids and, where the visual tokens go, `VisualSlot`s over the frames.
        `visual`, the input's `KeptTokens` when known, is for families whose prompt text depends on the input
        (frame timestamps). Everything up to the last slot must not depend on the question: it is the prefix that
        questions on one input share."""

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> the LLM's input embeddings."""
        return self.llm.get_input_embeddings()(ids)

    def forward_llm(self, embeds: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                    side: LLMSideInputs | None = None) -> torch.Tensor:
        """One forward pass of the LLM over `embeds` (B, S, D) after what `cache` holds: positions (B, S), or
        (P, B, S) for multi-axis positions; attention_mask (B, cached + S). Returns the logits of the last
        position, (B, V). `side`: per-token inputs besides the embeddings (families that take them override)."""
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, cache=cache,
                       use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def decode(self, ids: list[int]) -> str:
        """Generated ids -> the answer text."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def display_frames(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed pixels (T, 3, S, S) -> uint8 (T, S, S, 3): what the model saw (resized, cropped, flipped),
        with the normalisation undone, for pictures of the kept patches."""
        mean = torch.tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std).view(1, 3, 1, 1)
        rgb = (pixels.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
        return (rgb * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@dataclass
class LLMSideInputs:
    """Per-token inputs an LLM takes besides the embeddings, for the visual tokens of a prefill (Qwen3-VL's
    DeepStack: features added to the hidden states of its first layers at the visual positions)."""

    visual_mask: torch.Tensor
    """(B, S) True at the visual tokens of the embeddings passed."""
    features: tuple[torch.Tensor, ...]
    """One (V, D) tensor per extra feature set, V = visual tokens of the batch in reading order."""


def feature_layer_index(num_layers: int, feature_layer: int, setting: str) -> int:
    """0-based encoder layer whose output is hidden_states[feature_layer] (hidden_states[0] is the embeddings);
    `setting` names the config field in the error (mm_vision_select_layer, vision_feature_layer)."""
    index = feature_layer % (num_layers + 1) - 1
    if not -(num_layers + 1) <= feature_layer <= num_layers or index < 0:
        raise CheckpointError(
            f"{setting} {feature_layer} does not name an encoder layer of this {num_layers}-layer tower."
        )
    return index


_ADAPTERS: list[type[ModelAdapter]] = []


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make a family loadable by `fastervlm.load`."""
    _ADAPTERS.append(cls)
    return cls


def registered_adapters() -> list[type[ModelAdapter]]:
    """Every registered family, fallbacks last (`fastervlm.models` imports the built-in ones)."""
    return sorted(_ADAPTERS, key=lambda cls: cls.fallback)


def adapter_for(path: Path) -> type[ModelAdapter]:
    """The registered family whose `matches` accepts this checkpoint's config."""
    config = read_config(path)
    adapters = registered_adapters()
    for cls in adapters:
        if cls.matches(config):
            return cls
    families = ", ".join(cls.family for cls in adapters)
    raise CheckpointError(
        f"{path}/config.json (model_type {config.get('model_type')!r}, architectures {config.get('architectures')}) "
        f"is not a model fastervlm supports; supported families: {families}."
    )


@dataclass(frozen=True)
class TinySizes:
    """The sizes a family's tiny random checkpoint is built from (each family's tiny spec derives from this): small
    enough that a test loads and answers in well under a second."""

    image_size: int = 112
    patch_size: int = 14
    num_frames: int = 8
    """(112 / 14)^2 = 64 patches per frame, 8 frames: 512 video tokens by default."""
    vision_width: int = 32
    vision_intermediate: int = 64
    vision_layers: int = 3
    vision_heads: int = 2
    """The vision encoder; its feature layer is the second to last, as in the real checkpoints."""
    llm_width: int = 64
    llm_intermediate: int = 128
    llm_layers: int = 4
    llm_heads: int = 4
    """The LLM (a Llama)."""
    vocab_size: int = 384
    seed: int = 0
    """Seeds the random weights: the same sizes always write the same checkpoint."""
