"""What the transformers adapters share: pruning installed on a loaded transformers VLM, and taken off again.

A family file describes its model as `VisualStream`s (which tower encodes which pixels, which placeholder id
they fill, which projector follows); everything else is common and lives here:

- the [CLS] row of the feature layer, from the q/k that layer computes anyway (forward hooks on its q_proj and
  k_proj), so the towers keep SDPA/flash attention;
- selection through the method (`pruner.select`, the same core as the original-format path);
- the prompt's run of placeholders shrunk to the kept tokens, so a processor's output with the stock count
  still works, and `generate` still returns sequences that start with the caller's own input_ids;
- `HFPruning`: instance-level overrides of `generate`, `forward` and the base model's `get_*_features`,
  removed by `remove()` (the class is never touched, so other instances stay stock).

Not an adapter: adapters import it, it imports no adapter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from fastervlm.errors import FasterVLMError, UnsupportedModelError
from fastervlm.methods.base import EncodedVideo, LLMPruner, Pruner, VisualSelection, keep_all_tokens
from fastervlm.selection import split_by_frame
from fastervlm.scoring import cls_patch_scores
from fastervlm.timing import StageTimer

Modality = Literal["video", "image"]

# Vision encoders known to have no [CLS] token, by the model_type of their config (or of the whole VLM's).
_NO_CLS_VISION = {
    "siglip_vision_model": "SigLIP",
    "siglip2_vision_model": "SigLIP 2",
    "qwen2_vl": "Qwen2-VL's ViT",
    "qwen2_vl_vision": "Qwen2-VL's ViT",
    "qwen2_5_vl": "Qwen2.5-VL's ViT",
    "qwen2_5_vl_vision": "Qwen2.5-VL's ViT",
    "qwen3_vl": "Qwen3-VL's ViT",
    "qwen3_vl_vision": "Qwen3-VL's ViT",
    "qwen3_vl_moe": "Qwen3-VL's ViT",
}
_NO_CLS_MODELS = {
    "llava_onevision": "SigLIP",
    "qwen2_vl": "Qwen2-VL's ViT",
    "qwen2_5_vl": "Qwen2.5-VL's ViT",
    "qwen3_vl": "Qwen3-VL's ViT",
    "qwen3_vl_moe": "Qwen3-VL's ViT",
}
_CLS_VISION = ("clip_vision_model", "clip")


def encoder_without_cls(config: dict[str, Any]) -> str | None:
    """The vision encoder's name when the config shows one known to have no [CLS] token, else None."""
    vision_type = (config.get("vision_config") or {}).get("model_type")
    if vision_type in _CLS_VISION:
        return None
    return _NO_CLS_VISION.get(vision_type) or _NO_CLS_MODELS.get(config.get("model_type"))


def methods_without_cls() -> list[str]:
    """Registered methods that do not rank patches by [CLS] attention (they work on any vision encoder)."""
    from fastervlm.methods import list_methods
    from fastervlm.methods.base import CLS_SCORES

    return [name for name, cls in list_methods().items() if CLS_SCORES not in cls.inputs]


def no_cls_error(model: str, encoder: str, method: str) -> UnsupportedModelError:
    """The error for a [CLS]-based method on an encoder without [CLS]: says why, and which methods do apply."""
    return UnsupportedModelError(
        f"{model}'s vision encoder ({encoder}) has no [CLS] token, so method {method!r}, which ranks patches by "
        f"the [CLS] token's attention, cannot run on it. Methods that need no [CLS] token: "
        f"{', '.join(methods_without_cls())}."
    )


# ----- the [CLS] row of the feature layer ----------------------------------------------------------------------
def feature_layer_index(num_layers: int, feature_layer: int) -> int:
    """0-based encoder layer whose output is hidden_states[feature_layer] (hidden_states[0] is the embeddings)."""
    index = feature_layer % (num_layers + 1) - 1
    if not -(num_layers + 1) <= feature_layer <= num_layers or index < 0:
        raise UnsupportedModelError(
            f"vision_feature_layer {feature_layer} does not name an encoder layer of this {num_layers}-layer tower."
        )
    return index


class ClsAttentionRow:
    """While open, keeps the [CLS] query and all keys that one attention layer computes anyway.

    Forward hooks on the layer's q_proj and k_proj see their outputs; the attention itself runs unchanged
    (SDPA or flash, which return no weights). `scores()` then costs one (1 x d)(d x N) product per head.
    """

    def __init__(self, attention: nn.Module) -> None:
        self.attention = attention
        self.query: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> ClsAttentionRow:
        self._handles = [
            self.attention.q_proj.register_forward_hook(self._keep_query),
            self.attention.k_proj.register_forward_hook(self._keep_keys),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _keep_query(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.query = output[:, 0]

    def _keep_keys(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.keys = output

    def scores(self) -> torch.Tensor:
        """(F, N): each frame's [CLS] attention over its N patches, head mean, CLS->CLS dropped (not renormalised)."""
        if self.query is None or self.keys is None:
            raise RuntimeError("the feature layer did not run while ClsAttentionRow was open")
        frames, tokens, width = self.keys.shape
        heads = self.attention.num_heads
        query = self.query.view(frames, heads, width // heads)
        keys = self.keys.view(frames, tokens, heads, width // heads).transpose(1, 2)
        return cls_patch_scores(query, keys, self.attention.scale)


def vision_body(tower: nn.Module) -> nn.Module:
    """The module holding `embeddings` and `encoder` (SigLIP-style towers wrap it in `vision_model`)."""
    return getattr(tower, "vision_model", tower)


# ----- one kind of visual input of a model ---------------------------------------------------------------------
@dataclass
class VisualStream:
    """One kind of visual input of a transformers VLM (its videos, or its images) and where its pieces live.

    first_token_fed: the stock model feeds the feature layer's first token to the LLM (Video-LLaVA-hf videos,
    or vision_feature_select_strategy "full"); for a CLIP tower that token is the frame's [CLS].
    as_list: the model reads `pooler_output` as one tensor per item (LLaVA, NeXT) rather than one tensor.
    """

    modality: Modality
    pixel_key: str
    features_method: str
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
        """Candidate tokens per frame that a method chooses from (after any pooling): the N of --reduction."""
        return self.grid

    @property
    def feeds_cls(self) -> bool:
        """Whether the stock model feeds each frame's [CLS] token to the LLM."""
        return self.has_cls and self.first_token_fed

    def stock_tokens(self, frames: int) -> int:
        """Placeholders per item in a stock prompt (what the model's processor expands one placeholder to)."""
        return frames * (self.tokens_per_frame + int(self.feeds_cls))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(F, grid, C) patch tokens -> (F, tokens_per_frame, C) candidates; families that pool override this."""
        return tokens

    def pool_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """(F, grid) [CLS] scores -> (F, tokens_per_frame), matching `pool`."""
        return scores

    def package(self, items: list[torch.Tensor]) -> Any:
        """Projected tokens per item -> the `pooler_output` the model's forward reads."""
        return items if self.as_list else torch.cat(items)[None]

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


@dataclass
class ItemRecord:
    """What one video or image handed to the LLM in the last call (for Answer fields and tests)."""

    modality: Modality
    visual_tokens: int
    kept_indices: list[list[int]] | None
    cls_scores: torch.Tensor | None


@dataclass
class _Encoded:
    items: list[torch.Tensor]  # projected tokens per item, (K_i, D)
    stock: list[int]  # placeholders per item in a stock prompt
    frames: int


# ----- the prompt's placeholder runs -----------------------------------------------------------------------------
def placeholder_keep_mask(
    input_ids: torch.Tensor, token_id: int, stock: list[int], kept: list[int], what: str = "visual"
) -> torch.Tensor | None:
    """Which prompt positions stay when each item's `stock` placeholders shrink to its `kept` tokens.

    Items meet placeholders in reading order (row after row), as the model's masked_scatter fills them; each
    item keeps the first `kept` of its run. None when the prompt already holds exactly the kept count.
    """
    found = input_ids == token_id
    total = int(found.sum())
    if total == sum(kept):
        return None
    if total != sum(stock):
        raise FasterVLMError(
            f"the prompt holds {total} {what} placeholder tokens, but its {len(stock)} {what} input(s) take "
            f"{sum(stock)} (as the model's processor expands them) or {sum(kept)} (after pruning); build "
            "input_ids with the checkpoint's processor, one placeholder run per input."
        )
    positions = found.flatten().nonzero().squeeze(1)
    keep = torch.ones(input_ids.numel(), dtype=torch.bool, device=input_ids.device)
    start = 0
    for run, kept_here in zip(stock, kept):
        keep[positions[start + kept_here : start + run]] = False
        start += run
    return keep.view_as(input_ids)


def compact(tensor: torch.Tensor, keep: torch.Tensor, fill: int) -> torch.Tensor:
    """Rows of (B, S, ...) without the dropped positions, left-padded with `fill` when rows end up unequal."""
    lengths = keep.sum(1)
    width = int(lengths.max()) if len(lengths) else 0
    out = tensor.new_full((tensor.shape[0], width, *tensor.shape[2:]), fill)
    for row in range(tensor.shape[0]):
        out[row, width - int(lengths[row]) :] = tensor[row][keep[row]]
    return out


# ----- pruning installed on one model instance ----------------------------------------------------------------
class HFPruning:
    """A pruning method installed on one transformers VLM instance; `remove()` (or leaving `with`) undoes it.

    While installed, the model's own calls keep working: `model.generate(**inputs)` and `model(**inputs)`
    encode the pixels once, keep the tokens the method chooses, shrink each placeholder run to match and call
    the stock code with the kept features (`mm_encoder_outputs`). LLM-stage methods get every visual token
    and are attached to the decoder around the call.
    """

    ATTRIBUTE = "_fastervlm_pruning"

    def __init__(
        self,
        model: nn.Module,
        streams: list[VisualStream],
        pruner: Pruner,
        *,
        decoder: nn.Module,
        keep_cls: bool = False,
        unpruned_inputs: tuple[str, ...] = (),
        pad_token_id: int = 0,
    ) -> None:
        for stream in streams:
            stream.check()
            if pruner.needs_cls_scores and not stream.has_cls:
                raise no_cls_error(type(model).__name__, type(stream.tower).__name__, pruner.name)
        self.model = model
        self.streams = streams
        self.pruner = pruner
        self.decoder = decoder
        self.keep_cls = keep_cls
        self.unpruned_inputs = unpruned_inputs
        self.pad_token_id = pad_token_id
        self.timer: StageTimer | None = None
        self.clock: Any = None  # a StepClock started right before the LLM's generate, when set
        self.records: list[ItemRecord] = []
        self.input_ids: torch.Tensor | None = None  # the last call's prompt as the LLM saw it
        self.attention_mask: torch.Tensor | None = None
        self._geometry = (1, streams[0].tokens_per_frame)
        self._saved: list[tuple[Any, str, bool, Any]] = []
        self._originals: dict[str, Callable[..., Any]] = {}
        self._in_generate = False

    # ----- install / remove ------------------------------------------------------------------------------------
    def install(self) -> HFPruning:
        previous = getattr(self.model, self.ATTRIBUTE, None)
        if previous is not None:
            previous.remove()
        self._override(self.model, "generate", self._generate)
        self._override(self.model, "forward", self._forward)
        base = self.model.model
        for stream in self.streams:
            self._override(base, stream.features_method, functools.partial(self._get_features, stream))
        setattr(self.model, self.ATTRIBUTE, self)
        return self

    def remove(self) -> None:
        """Restore the stock model (idempotent)."""
        for owner, name, had, previous in reversed(self._saved):
            if had:
                setattr(owner, name, previous)
            else:
                delattr(owner, name)
        self._saved = []
        if getattr(self.model, self.ATTRIBUTE, None) is self:
            delattr(self.model, self.ATTRIBUTE)

    @property
    def installed(self) -> bool:
        return bool(self._saved)

    def __enter__(self) -> HFPruning:
        if not self.installed:
            self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _override(self, owner: Any, name: str, replacement: Callable[..., Any]) -> None:
        """Shadow `owner.name` on the instance; functools.wraps keeps the signature transformers inspects."""
        had = name in vars(owner)
        self._saved.append((owner, name, had, vars(owner).get(name)))
        self._originals[name] = original = getattr(owner, name)

        @functools.wraps(original)
        def override(*args: Any, **kwargs: Any) -> Any:
            return replacement(*args, **kwargs)

        setattr(owner, name, override)

    # ----- the overrides ---------------------------------------------------------------------------------------
    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > 1:
            raise TypeError("with fastervlm applied, pass generate's arguments after the inputs by keyword")
        if args or "inputs" in kwargs:  # generate's own name for its first argument
            kwargs["input_ids"] = args[0] if args else kwargs.pop("inputs")
        user_ids = kwargs.get("input_ids")
        call, visual = self._prepare(kwargs)
        self._in_generate = True
        try:
            with self._llm_stage(visual) as run:
                if self.clock is not None:
                    self.clock.start()
                out = self._originals["generate"](**call)
            self._note_llm_kept(run)
        finally:
            self._in_generate = False
        if user_ids is None or call.get("input_ids") is user_ids:
            return out
        return _with_prefix(out, user_ids, call["input_ids"].shape[1])

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        forward = self._originals["forward"]
        if self._in_generate:  # generate's own steps: the prompt was prepared once, before the prefill
            return forward(*args, **kwargs)
        if args:
            names = list(_parameters(forward))
            kwargs.update(zip(names, args))
        call, visual = self._prepare(kwargs)
        with self._llm_stage(visual) as run:
            out = forward(**call)
        self._note_llm_kept(run)
        return out

    def _get_features(self, stream: VisualStream, *args: Any, **kwargs: Any) -> BaseModelOutputWithPooling:
        """Stands in for the base model's get_video_features / get_image_features: the kept tokens, projected."""
        pixels = args[0] if args else kwargs[stream.pixel_key]
        self.records = []
        return BaseModelOutputWithPooling(pooler_output=stream.package(self._encode(stream, pixels).items))

    # ----- the work ---------------------------------------------------------------------------------------------
    def _prepare(self, call: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor | None]:
        """The call with pixels replaced by the kept, projected tokens and each placeholder run shrunk to match."""
        if self.pruner.prunes:
            for key in self.unpruned_inputs:
                if call.get(key) is not None:
                    raise UnsupportedModelError(
                        f"fastervlm prunes this model's {', '.join(s.modality + 's' for s in self.streams)} only, "
                        f"but the call also passes {key}; call fastervlm.remove(model) before such calls."
                    )
        present = [s for s in self.streams if call.get(s.pixel_key) is not None]
        if not present:
            return call, None
        self.records = []
        ids = call.get("input_ids")
        encoded: dict[str, BaseModelOutputWithPooling] = {}
        keep: torch.Tensor | None = None
        for stream in present:
            result = self._encode(stream, call.pop(stream.pixel_key))
            encoded[stream.modality] = BaseModelOutputWithPooling(pooler_output=stream.package(result.items))
            kept = [len(item) for item in result.items]
            self._geometry = (result.frames, stream.tokens_per_frame)
            if ids is None:
                if kept != result.stock:
                    raise FasterVLMError("with fastervlm applied, pass input_ids (not inputs_embeds): the "
                                         "placeholder runs in the prompt are shrunk to the kept tokens.")
                continue
            mask = placeholder_keep_mask(ids, stream.token_id, result.stock, kept, stream.modality)
            if mask is not None:
                keep = mask if keep is None else keep & mask
        call["mm_encoder_outputs"] = {**(call.get("mm_encoder_outputs") or {}), **encoded}
        if ids is None:
            return call, None
        if keep is not None:
            for key in ("position_ids", "token_type_ids", "inputs_embeds"):
                if call.get(key) is not None:
                    raise FasterVLMError(
                        f"with fastervlm applied, leave out {key}: the prompt is shortened to the kept tokens."
                    )
            mask = call.get("attention_mask")
            call["attention_mask"] = compact(torch.ones_like(ids) if mask is None else mask, keep, 0)
            if call.get("labels") is not None:
                call["labels"] = compact(call["labels"], keep, -100)
            call["input_ids"] = compact(ids, keep, self.pad_token_id)
        self.input_ids, self.attention_mask = call["input_ids"], call.get("attention_mask")
        token_ids = torch.tensor([s.token_id for s in present], device=ids.device)
        return call, torch.isin(call["input_ids"], token_ids)

    def _encode(self, stream: VisualStream, pixels: torch.Tensor) -> _Encoded:
        """Tower -> [CLS] scores -> selection -> projector for a batch of items of one stream."""
        timed = self.timer if self.timer is not None else nullcontext
        items, frames = (pixels.shape[0], pixels.shape[1]) if stream.modality == "video" else (pixels.shape[0], 1)
        flat = pixels.flatten(0, 1) if stream.modality == "video" else pixels
        wants_scores = self.pruner.needs_cls_scores
        layers = vision_body(stream.tower).encoder.layers
        attention = layers[feature_layer_index(len(layers), stream.feature_layer)].self_attn
        row = ClsAttentionRow(attention) if wants_scores else nullcontext()
        with timed("vision_encoder"), row:
            hidden = stream.tower(flat, output_hidden_states=stream.feature_layer, return_dict=True)
            hidden = hidden.hidden_states[stream.feature_layer]
        scores = None
        if wants_scores:
            with timed("cls_scoring"), torch.no_grad():  # a ranking only: never part of a gradient
                scores = stream.pool_scores(row.scores()).unflatten(0, (items, frames))
        with timed("selection"):
            patches = stream.pool(hidden[:, 1:] if stream.has_cls else hidden).unflatten(0, (items, frames))
            cls = hidden[:, 0].unflatten(0, (items, frames)) if self.keep_cls and stream.feeds_cls else None
            chosen = []
            for item in range(items):
                selection = self._select(patches[item], None if scores is None else scores[item])
                tokens = selection.features if cls is None else _with_cls(selection, cls[item])
                chosen.append(tokens)
                self.records.append(ItemRecord(
                    stream.modality,
                    len(tokens),
                    None if selection.kept_indices is None else [idx.tolist() for idx in selection.kept_indices],
                    None if scores is None else scores[item].float().cpu(),
                ))
        with timed("projector"):
            projected = stream.projector(torch.cat(chosen)).split([len(tokens) for tokens in chosen])
        return _Encoded(list(projected), [stream.stock_tokens(frames)] * items, frames)

    def _select(self, patches: torch.Tensor, scores: torch.Tensor | None) -> VisualSelection:
        if self.pruner.stage == "vision":
            return self.pruner.select(EncodedVideo(patches, scores))
        return keep_all_tokens(patches)

    def _note_llm_kept(self, run: Any) -> None:
        """After an LLM-stage method ran: record the visual tokens it kept from its pruning layer on, per frame."""
        kept = getattr(run, "kept_visual", None)
        if kept is None or self.keep_cls:  # with [CLS] tokens among the visual ones, ranks are not patch indices
            return
        frames, patches = self._geometry
        for record, row in zip(self.records, kept):
            record.kept_indices = split_by_frame(row, frames, patches)
            record.visual_tokens = len(row)

    def _llm_stage(self, visual: torch.Tensor | None) -> AbstractContextManager[Any]:
        """LLM-stage methods (FastV) attached to the decoder for one call; nothing for vision-stage ones."""
        if not isinstance(self.pruner, LLMPruner) or visual is None:
            return nullcontext()
        frames, patches = self._geometry
        return self.pruner.attach(self.decoder, visual, frames=frames, num_patches=patches)


def _with_cls(selection: VisualSelection, cls: torch.Tensor) -> torch.Tensor:
    """Each frame's [CLS] token (T, C) in front of that frame's kept tokens, as the stock order has it."""
    frames = selection.features.split(selection.tokens_per_frame)
    return torch.cat([piece for token, frame in zip(cls, frames) for piece in (token[None], frame)])


def _with_prefix(out: Any, user_ids: torch.Tensor, prompt_length: int) -> Any:
    """generate's output with the caller's own input_ids in front of the new tokens (beams/samples repeated)."""
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    repeats = sequences.shape[0] // user_ids.shape[0]
    prefix = user_ids.to(sequences.device).repeat_interleave(repeats, dim=0)
    full = torch.cat([prefix, sequences[:, prompt_length:]], dim=1)
    if isinstance(out, torch.Tensor):
        return full
    out.sequences = full
    return out


def _parameters(function: Callable[..., Any]) -> dict[str, Any]:
    import inspect

    return dict(inspect.signature(function).parameters)
