"""One call to prune a Hugging Face transformers VLM that you already loaded.

    model = VideoLlavaForConditionalGeneration.from_pretrained("LanguageBind/Video-LLaVA-7B-hf", ...)
    pruning = fastervlm.apply(model, method="fastervlm", reduction=0.9)
    out = model.generate(**inputs)        # the processor's inputs as they are; out starts with inputs.input_ids
    pruning.remove()                      # or fastervlm.remove(model); or `with fastervlm.apply(...):`

While applied, `model.generate(**inputs)` and `model(**inputs)` run the engine's stages on the pixels (encode ->
select -> project), shrink each placeholder run of the prompt to the kept tokens, and call the stock code with
those tokens as its pre-computed encoder outputs (`mm_encoder_outputs`). LLM-stage methods get every visual
token and attach to the decoder around the call. Only the instance is touched (two attributes), so other
instances stay stock. Supported: the registered transformers families (`fastervlm.models.hf_base`); the same
families load from a folder with `fastervlm.load(path)`.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from fastervlm import engine
from fastervlm.llm import llm_stage, one_geometry
from fastervlm.errors import FasterVLMError, UnsupportedModelError
from fastervlm.methods import Pruner, create_pruner, no_cls_error
from fastervlm.models.base import Modality
from fastervlm.models.hf_base import HFAdapter, HFStream, hf_adapter_for, hf_families
from fastervlm.models.hf_no_cls import encoder_without_cls
from fastervlm.prompts import KeptTokens


def apply(model: nn.Module, method: str | Pruner | None = None, *, keep_cls: bool = False, **settings: Any) -> HFPruning:
    """Install a pruning method on `model` (replacing one applied before) and return the handle that undoes it.

    method: a method name with its `settings` (keep=, reduction=, ...), or a Pruner instance; by default the
    registry's default method. keep_cls: also feed each frame's [CLS] token where the stock model does
    (Video-LLaVA-hf videos).
    """
    from fastervlm.methods import default_method

    if isinstance(method, Pruner) and settings:
        raise FasterVLMError("pass method settings either to create_pruner or to apply(), not both.")
    pruner = method if isinstance(method, Pruner) else create_pruner(method or default_method(True), **settings)
    config = model.config.to_dict()
    name = type(model).__name__
    family = hf_adapter_for(config)
    unsupported = (f"fastervlm.apply supports {', '.join(cls.model_class for cls in hf_families())}; {name} (model_type "
                   f"{config.get('model_type')!r}) is not one of them yet.")
    encoder = encoder_without_cls(config)
    if encoder is not None and pruner.needs_cls_scores:
        error = no_cls_error(name, encoder, pruner.name)
        raise error if family is not None else UnsupportedModelError(f"{error} {unsupported}")
    if family is None:
        raise UnsupportedModelError(unsupported)
    if not (hasattr(model, "generate") and hasattr(model, "model")):
        raise UnsupportedModelError(f"pass the whole {family.model_class}, not its {name} part.")
    return HFPruning(model, family, pruner, keep_cls=keep_cls).install()


def remove(model: nn.Module) -> bool:
    """Undo `apply` on `model`; False when nothing was applied."""
    pruning = getattr(model, HFPruning.ATTRIBUTE, None)
    if pruning is None:
        return False
    pruning.remove()
    return True


def processor_inputs(
    model: nn.Module,
    checkpoint: str | os.PathLike,
    questions: list[str],
    *,
    videos: list[str | os.PathLike] | None = None,
    images: list[str | os.PathLike] | None = None,
) -> dict[str, torch.Tensor]:
    """What the model's processor returns for one question per video (or image), built without torchvision.

    The frames are sampled as everywhere in fastervlm (8 per video, decord's numbering; the Qwen-VL families 16)
    and preprocessed as the checkpoint's processor does (its image processor on the PIL backend; Qwen-VL's video
    processor rewritten without torchvision); the prompt is the checkpoint's chat template (else the model card's)
    with each placeholder repeated as the stock processor does, left-padded, with what else the processor returns
    (Qwen-VL: mm_token_type_ids, the grids, second_per_grid_ts; the timestamps in Qwen3-VL's prompt). `checkpoint`
    is the folder the model was loaded from (for a hub id: `huggingface_hub.snapshot_download(id)`). The result
    feeds the stock model and a model under `apply` alike: `model.generate(**inputs)`.
    """
    from fastervlm.media import read_image
    from fastervlm.pipeline import Pipeline

    family = hf_adapter_for(model.config.to_dict())
    if family is None:
        raise UnsupportedModelError(f"processor_inputs supports {', '.join(c.model_class for c in hf_families())}; "
                                    f"{type(model).__name__} is not one of them.")
    media = videos if videos is not None else images
    if (videos is None) == (images is None) or len(media) != len(questions):
        raise FasterVLMError("give one video (videos=[...]) or one image (images=[...]) per question.")
    adapter = family.around(model, Path(checkpoint))
    if videos is not None:
        pipeline = Pipeline(adapter, Path(checkpoint))
        return adapter.processor_batch(questions, videos=[pipeline.frames(video=video) for video in videos])
    return adapter.processor_batch(questions, images=[read_image(image)[0] for image in images])


@dataclass
class ItemRecord:
    """What one video or image handed to the LLM in the last call (for tests and inspection)."""

    modality: Modality
    visual_tokens: int
    kept_indices: list[list[int]] | None
    cls_scores: torch.Tensor | None


class HFPruning:
    """A pruning method installed on one transformers VLM instance; `remove()` (or leaving `with`) undoes it."""

    ATTRIBUTE = "_fastervlm_pruning"

    def __init__(self, model: nn.Module, family: type[HFAdapter], pruner: Pruner, *, keep_cls: bool = False) -> None:
        self.model, self.family, self.pruner, self.keep_cls = model, family, pruner, keep_cls
        self.streams = family.streams(model)
        self.inputs = engine.encoder_inputs(pruner)
        for stream in self.streams:
            stream.check()
            engine.check_inputs(stream, self.inputs, type(model).__name__, pruner.name)
        self.decoder = family.decoder_of(model)
        self.unpruned_inputs = family.unpruned_inputs
        pad = model.config.text_config.pad_token_id
        self.pad_token_id = pad if pad is not None else 0
        self.records: list[ItemRecord] = []
        self.input_ids: torch.Tensor | None = None  # the last call's prompt as the LLM saw it
        self.attention_mask: torch.Tensor | None = None
        self._geometry = (1, self.streams[0].tokens_per_frame)
        self._saved: list[tuple[str, bool, Any]] = []
        self._originals: dict[str, Callable[..., Any]] = {}

    # ----- install / remove ------------------------------------------------------------------------------------
    def install(self) -> HFPruning:
        previous = getattr(self.model, self.ATTRIBUTE, None)
        if previous is not None:
            previous.remove()
        self._override("generate", self._generate)
        self._override("forward", self._forward)
        setattr(self.model, self.ATTRIBUTE, self)
        return self

    def remove(self) -> None:
        """Restore the stock model (idempotent)."""
        for name, had, previous in reversed(self._saved):
            if had:
                setattr(self.model, name, previous)
            else:
                delattr(self.model, name)
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

    def _override(self, name: str, replacement: Callable[..., Any]) -> None:
        """Shadow `model.name` on the instance; functools.wraps keeps the signature transformers inspects."""
        had = name in vars(self.model)
        self._saved.append((name, had, vars(self.model).get(name)))
        self._originals[name] = original = getattr(self.model, name)

        @functools.wraps(original)
        def override(*args: Any, **kwargs: Any) -> Any:
            return replacement(*args, **kwargs)

        setattr(self.model, name, override)

    # ----- the overrides ---------------------------------------------------------------------------------------
    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > 1:
            raise TypeError("with fastervlm applied, pass generate's arguments after the inputs by keyword")
        if args or "inputs" in kwargs:  # generate's own name for its first argument
            kwargs["input_ids"] = args[0] if args else kwargs.pop("inputs")
        user_ids = kwargs.get("input_ids")
        call, visual = self._prepare(kwargs, text_row=True)
        out = self._call("generate", call, visual)
        if user_ids is None or call.get("input_ids") is user_ids:
            return out
        return _with_prefix(out, user_ids, call["input_ids"].shape[1])

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            kwargs.update(zip(inspect.signature(self._originals["forward"]).parameters, args))
        call, visual = self._prepare(kwargs)  # generate's own steps carry no pixels: they pass straight through
        return self._call("forward", call, visual)

    def _call(self, name: str, call: dict[str, Any], visual: torch.Tensor | None) -> Any:
        """The stock `name` with the prepared call, an LLM-stage method attached while it runs."""
        if visual is None:
            return self._originals[name](**call)
        frames, patches = self._geometry
        with llm_stage(self.pruner, self.decoder, visual, frames, patches) as run:
            out = self._originals[name](**call)
        self._note_llm_kept(run)
        return out

    # ----- the work ---------------------------------------------------------------------------------------------
    def _prepare(self, call: dict[str, Any], text_row: bool = False) -> tuple[dict[str, Any], torch.Tensor | None]:
        """The call with pixels replaced by the kept, projected tokens and each placeholder run shrunk to match;
        for models with multi-axis positions (M-RoPE) the stock positions of the unshrunk prompt, gathered at the
        kept tokens (`text_row`: with the 1-D text positions in front, as `generate` passes them)."""
        self._refuse_unpruned(call)
        present = [s for s in self.streams if call.get(s.pixel_key) is not None]
        if not present:
            return call, None
        self.records = []
        ids = call.get("input_ids")
        stock_positions = None if ids is None else self.family.stock_positions(self.model, call)
        encoded: dict[str, BaseModelOutputWithPooling] = {}
        keep: torch.Tensor | None = None
        runs: dict[int, list[int]] = {}  # placeholder id -> each item's run after shrinking
        items: dict[int, list[KeptTokens]] = {}
        for stream in present:
            items[stream.token_id] = kept = self._encode(stream, stream.inputs(call))
            encoded[stream.modality] = stream.package(kept)
            stock, after = stream.placeholder_runs(kept)
            runs[stream.token_id] = [len(item.item()) for item in kept]
            if ids is None:
                if after != stock:
                    raise FasterVLMError("with fastervlm applied, pass input_ids (not inputs_embeds): the "
                                         "placeholder runs in the prompt are shrunk to the kept tokens.")
                continue
            mask = placeholder_keep_mask(ids, stream.token_id, stock, after, stream.modality)
            if mask is not None:
                keep = mask if keep is None else keep & mask
        call["mm_encoder_outputs"] = {**(call.get("mm_encoder_outputs") or {}), **encoded}
        if ids is None:
            return call, None
        kept_columns = torch.ones_like(ids, dtype=torch.bool) if keep is None else keep
        if keep is not None:
            _shorten(call, ids, keep, self.pad_token_id)
        if stock_positions is not None:  # M-RoPE: each kept token at its stock (t, h, w), the text at its own
            if call.get("position_ids") is not None:
                raise FasterVLMError("with fastervlm applied, leave out position_ids: the kept tokens take their "
                                     "stock positions, computed from the prompt.")
            positions = kept_positions(stock_positions[0], ids, kept_columns, items)
            mask = call.get("attention_mask")
            call["position_ids"] = with_text_row(positions, mask) if text_row else positions
            dropped = (~kept_columns).sum(1, keepdim=True).to(stock_positions[1].device)
            self.family.continue_from(self.model, stock_positions[1] + dropped)
        self.input_ids, self.attention_mask = call["input_ids"], call.get("attention_mask")
        return call, self._visual_mask(call["input_ids"], present, runs)

    @staticmethod
    def _visual_mask(ids: torch.Tensor, present: list[HFStream], runs: dict[int, list[int]]) -> torch.Tensor:
        """(B, S) True at the visual tokens of the prompt: the placeholders, less each item's trailing tokens (which
        LLM-stage methods treat as text)."""
        visual = torch.isin(ids, torch.tensor([s.token_id for s in present], device=ids.device))
        for stream in present:
            trailing = stream.trailing_tokens()
            if trailing is not None:
                visual &= ~run_tails(ids, stream.token_id, runs[stream.token_id], len(trailing))
        return visual

    def _refuse_unpruned(self, call: dict[str, Any]) -> None:
        if not self.pruner.prunes:
            return
        for key in self.unpruned_inputs:
            if call.get(key) is not None:
                raise UnsupportedModelError(
                    f"fastervlm prunes this model's {', '.join(s.modality + 's' for s in self.streams)} only, "
                    f"but the call also passes {key}; call fastervlm.remove(model) before such calls."
                )

    def _encode(self, stream: HFStream, pixels: list[torch.Tensor]) -> list[KeptTokens]:
        """The engine's encode -> select -> project for a batch of items of one stream."""
        tokens = engine.encode(stream, pixels, self.inputs, keep_cls=self.keep_cls)
        kept = engine.project(stream, tokens, engine.select(tokens, self.pruner))
        self._geometry = one_geometry(self.pruner, [item.selection for item in kept])
        for item in kept:
            self.records.append(ItemRecord(stream.modality, item.tokens, item.kept_indices,
                                           None if item.cls_scores is None else item.cls_scores.float().cpu()))
        return kept

    def _note_llm_kept(self, run: Any) -> None:
        """After an LLM-stage method ran: record the visual tokens it kept from its pruning layer on, per frame."""
        from fastervlm.selection import split_by_frame

        kept = getattr(run, "kept_visual", None)
        if kept is None:
            return
        frames, patches = self._geometry
        for record, row in zip(self.records, kept):
            record.visual_tokens = len(row)
            if not self.keep_cls:  # with [CLS] tokens among the visual ones, ranks are not patch indices
                record.kept_indices = split_by_frame(row, frames, patches)


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


def run_tails(input_ids: torch.Tensor, token_id: int, runs: list[int], tail: int) -> torch.Tensor:
    """(B, S) True at the last `tail` positions of each item's run of `token_id` placeholders (items in reading
    order, run lengths `runs`): where an item's trailing tokens land."""
    positions = (input_ids == token_id).flatten().nonzero().squeeze(1)
    marked = torch.zeros(input_ids.numel(), dtype=torch.bool, device=input_ids.device)
    end = 0
    for run in runs:
        end += run
        marked[positions[end - tail : end]] = True
    return marked.view_as(input_ids)


def compact(tensor: torch.Tensor, keep: torch.Tensor, fill: int) -> torch.Tensor:
    """Rows of (B, S, ...) without the dropped positions, left-padded with `fill` when rows end up unequal."""
    lengths = keep.sum(1)
    width = int(lengths.max()) if len(lengths) else 0
    out = tensor.new_full((tensor.shape[0], width, *tensor.shape[2:]), fill)
    for row in range(tensor.shape[0]):
        out[row, width - int(lengths[row]) :] = tensor[row][keep[row]]
    return out


def kept_positions(stock: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor,
                   items: dict[int, list[KeptTokens]]) -> torch.Tensor:
    """(P, B, S) stock positions of the unshrunk prompt -> (P, B, S') those of the shrunk one: text keeps its
    columns' positions; the kept placeholders of an item (the first ones of each frame's run, `placeholder_keep_mask`)
    take, in prompt order, the positions of their tokens' sources. Items meet their placeholders in reading order,
    an item's placeholders numbered as its candidates (frame x N + patch)."""
    take = torch.arange(ids.numel(), device=ids.device)
    for token_id, kept in items.items():
        columns = (ids == token_id).flatten().nonzero().squeeze(1)
        start = 0
        for item in kept:
            frames, patches = item.selection.frames, item.selection.patches
            own = columns[start : start + frames * patches]
            held = torch.cat([own[frame * patches : frame * patches + count]
                              for frame, count in enumerate(item.tokens_per_frame)])
            take[held] = own[item.selection.source.to(own.device)]
            start += frames * patches
    gathered = stock.flatten(1)[:, take.to(stock.device)].view_as(stock)
    return compact(gathered.permute(1, 2, 0), keep.to(stock.device), 0).permute(2, 0, 1)


def with_text_row(positions: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(3, B, S) M-RoPE positions with the 1-D text positions in front, (4, B, S), as `generate` builds them."""
    if attention_mask is None:
        text = torch.arange(positions.shape[-1], device=positions.device).expand(positions.shape[1], -1)
    else:
        text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    return torch.cat([text[None].to(positions), positions])


def _shorten(call: dict[str, Any], ids: torch.Tensor, keep: torch.Tensor, pad_token_id: int) -> None:
    """input_ids, attention_mask, mm_token_type_ids and labels of the call without the dropped placeholders."""
    for key in ("position_ids", "token_type_ids", "inputs_embeds"):
        if call.get(key) is not None:
            raise FasterVLMError(f"with fastervlm applied, leave out {key}: the prompt is shortened to the kept tokens.")
    mask = call.get("attention_mask")
    call["attention_mask"] = compact(torch.ones_like(ids) if mask is None else mask, keep, 0)
    if call.get("labels") is not None:
        call["labels"] = compact(call["labels"], keep, -100)
    if call.get("mm_token_type_ids") is not None:
        call["mm_token_type_ids"] = compact(call["mm_token_type_ids"], keep, 0)
    call["input_ids"] = compact(ids, keep, pad_token_id)


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
