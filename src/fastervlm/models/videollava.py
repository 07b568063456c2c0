"""Original-format Video-LLaVA checkpoints (LanguageBind/Video-LLaVA-7B + LanguageBind_Video_merge).

Everything specific to this family lives here: detecting the checkpoint, loading the Llama (transformers' own
LlamaForCausalLM and tokenizer), the mlp2x_gelu projector from the LLM shards and the LanguageBind tower, the
llava_v1 prompt with one placeholder per frame, and generation with the kept tokens spliced into the prompt.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers import logging as hf_logging
from transformers.initialization import no_init_weights

from fastervlm import media
from fastervlm.errors import CheckpointError
from fastervlm.methods.base import EncodedVideo, LLMPruner, Pruner, VisualSelection, keep_all_tokens
from fastervlm.models.base import Generated, GenerationSettings, ModelAdapter, read_config, register_adapter
from fastervlm.models.generation import StepClock, generation_config, until_eos
from fastervlm.models.languagebind import LanguageBindVideoTower, load_video_tower
from fastervlm.models.weights import load_into, load_prefix, weight_files
from fastervlm.scoring import cls_patch_scores
from fastervlm.selection import split_by_frame
from fastervlm.timing import StageTimer


IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN_INDEX = -200  # the original's marker id for a placeholder in the token list
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
PROJECTOR_PREFIX = "model.mm_projector."


def llava_v1_prompt(question: str, num_frames: int) -> str:
    """The llava_v1 conversation with one <image> placeholder per frame, adjacent, before the question."""
    return f"{SYSTEM_PROMPT} USER: {IMAGE_PLACEHOLDER * num_frames}\n{question} ASSISTANT:"


def tokenize_with_placeholders(tokenizer: Any, prompt: str) -> list[int]:
    """Tokenise each text chunk between placeholders on its own (as the original does), keep the first BOS
    only, and put one IMAGE_TOKEN_INDEX where each placeholder was."""
    ids: list[int] = []
    for position, chunk in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        chunk_ids = tokenizer(chunk).input_ids
        if position > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            if chunk_ids and chunk_ids[0] == tokenizer.bos_token_id:
                chunk_ids = chunk_ids[1:]
        ids.extend(chunk_ids)
    return ids


def build_projector(config: dict[str, Any]) -> nn.Module:
    """mlp2x_gelu: Linear(mm_hidden -> hidden), exact GELU, Linear(hidden -> hidden); keys 0.* and 2.*."""
    kind = config.get("mm_projector_type", "linear")
    if kind != "mlp2x_gelu":
        raise CheckpointError(f"mm_projector_type {kind!r} is not supported (Video-LLaVA uses 'mlp2x_gelu').")
    hidden, vision = config["hidden_size"], config["mm_hidden_size"]
    return nn.Sequential(nn.Linear(vision, hidden), nn.GELU(), nn.Linear(hidden, hidden))


@dataclass
class _Prompt:
    embeds: torch.Tensor  # (S, hidden)
    visual_mask: torch.Tensor  # (S,) True at visual tokens


@register_adapter
class VideoLlavaAdapter(ModelAdapter):
    """LlavaLlamaForCausalLM checkpoints with a LanguageBind video tower."""

    family = "video-llava"
    media = "video"

    def __init__(
        self,
        llm: LlamaForCausalLM,
        projector: nn.Module,
        tower: LanguageBindVideoTower,
        tokenizer: Any,
        config: dict[str, Any],
        generation_defaults: GenerationConfig,
    ) -> None:
        self.llm, self.projector, self.tower, self.tokenizer = llm, projector, tower, tokenizer
        self.config = config
        self.generation_defaults = generation_defaults
        self.select_layer = int(config.get("mm_vision_select_layer", -2))
        if config.get("mm_vision_select_feature", "patch") != "patch":
            raise CheckpointError("only mm_vision_select_feature 'patch' is supported (the original video setting).")
        self.num_frames = tower.num_frames
        self.num_patches = tower.num_patches
        self.device = next(llm.parameters()).device
        self.dtype = next(llm.parameters()).dtype

    # ----- detection and loading -------------------------------------------------------------------------
    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return "LlavaLlamaForCausalLM" in (config.get("architectures") or []) or "mm_video_tower" in config

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        video_tower: str | Path | None = None,
    ) -> VideoLlavaAdapter:
        config = read_config(path)
        dtype = dtype or _default_dtype(config, device)
        tower = load_video_tower(_tower_dir(path, config, video_tower), device=device, dtype=dtype)
        if config.get("mm_hidden_size") != tower.config.hidden_size:
            raise CheckpointError(
                f"{path}: mm_hidden_size {config.get('mm_hidden_size')} does not match the video tower's width "
                f"{tower.config.hidden_size}; pass the tower this checkpoint was trained with (--video-tower)."
            )
        llm = _load_llama(path, config, device, dtype)
        with no_init_weights():  # every weight is loaded (strictly) just below
            projector = build_projector(config).to(device=device, dtype=dtype)
        load_into(projector, load_prefix(path, PROJECTOR_PREFIX, strip=True), path)
        projector = projector.eval()
        tokenizer = _load_tokenizer(path)
        generation = GenerationConfig.from_pretrained(path) if (path / "generation_config.json").is_file() else GenerationConfig()
        return cls(llm, projector, tower, tokenizer, config, generation)

    # ----- the pipeline contract ---------------------------------------------------------------------------
    def preprocess(self, frames: np.ndarray, *, flip: bool = False) -> torch.Tensor:
        return media.languagebind_transform(frames, size=self.tower.config.image_size, flip=flip)

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
        with timer("vision_encoder"):
            features, cls = self.tower(pixels, self.select_layer)
        scores = None
        if pruner.needs_cls_scores:
            with timer("cls_scoring"):
                scores = cls_patch_scores(cls.query, cls.keys, cls.scale).unflatten(0, features.shape[:2])
        with timer("selection"):
            selections = [self._select(pruner, video, None if scores is None else scores[i]) for i, video in enumerate(features)]
        with timer("projector"):
            projected = self.projector(torch.cat([s.features for s in selections]))
        prompts = self._prompts(questions, selections, projected)
        outputs, prompt_lengths, llm_kept = self._generate(prompts, pruner, settings, timer)
        kept_indices = [None if sel.kept_indices is None else [idx.tolist() for idx in sel.kept_indices] for sel in selections]
        visual_tokens = [int(p.visual_mask.sum()) for p in prompts]
        if llm_kept is not None:  # an LLM-stage method: report what it kept from its pruning layer on
            kept_indices = [split_by_frame(row, self.num_frames, self.num_patches) for row in llm_kept]
            visual_tokens = [len(row) for row in llm_kept]
        return [
            Generated(
                text=self._decode(ids),
                output_ids=ids,
                prompt_tokens=prompt_lengths[i],
                visual_tokens=visual_tokens[i],
                kept_indices=kept_indices[i],
                cls_scores=None if scores is None else scores[i].float().cpu(),
            )
            for i, ids in enumerate(outputs)
        ]

    # ----- steps -------------------------------------------------------------------------------------------
    @staticmethod
    def _select(pruner: Pruner, features: torch.Tensor, scores: torch.Tensor | None) -> VisualSelection:
        if pruner.stage == "vision":
            return pruner.select(EncodedVideo(features, scores))
        return keep_all_tokens(features)

    def _prompts(self, questions: list[str], selections: list[VisualSelection], projected: torch.Tensor) -> list[_Prompt]:
        """Each placeholder replaced by its frame's kept tokens; text embedded by the LLM's own table."""
        embed = self.llm.get_input_embeddings()
        per_sample = projected.split([sum(s.tokens_per_frame) for s in selections])
        prompts = []
        for question, selection, visual in zip(questions, selections, per_sample):
            ids = tokenize_with_placeholders(self.tokenizer, llava_v1_prompt(question, self.num_frames))
            frames = iter(visual.split(selection.tokens_per_frame))
            pieces, mask, text = [], [], []
            for token in ids + [IMAGE_TOKEN_INDEX]:  # a final marker flushes the trailing text
                if token != IMAGE_TOKEN_INDEX:
                    text.append(token)
                    continue
                if text:
                    pieces.append(embed(torch.tensor(text, device=self.device)))
                    mask.append(torch.zeros(len(text), dtype=torch.bool))
                    text = []
                frame = next(frames, None)
                if frame is not None:
                    pieces.append(frame)
                    mask.append(torch.ones(len(frame), dtype=torch.bool))
            prompts.append(_Prompt(torch.cat(pieces), torch.cat(mask).to(self.device)))
        return prompts

    def _generate(
        self, prompts: list[_Prompt], pruner: Pruner, settings: GenerationSettings, timer: StageTimer
    ) -> tuple[list[list[int]], list[int], torch.Tensor | None]:
        """Left-pad the batch, run transformers' generate with KV cache, split the timing at the first token.

        Also returns, for an LLM-stage method, the (B, R) ranks of the visual tokens it kept (else None)."""
        lengths = [len(p.embeds) for p in prompts]
        longest = max(lengths)
        width = prompts[0].embeds.shape[-1]
        embeds = torch.zeros(len(prompts), longest, width, device=self.device, dtype=self.dtype)
        attention = torch.zeros(len(prompts), longest, dtype=torch.long, device=self.device)
        visual = torch.zeros(len(prompts), longest, dtype=torch.bool, device=self.device)
        for row, prompt in enumerate(prompts):
            embeds[row, longest - len(prompt.embeds):] = prompt.embeds
            attention[row, longest - len(prompt.embeds):] = 1
            visual[row, longest - len(prompt.embeds):] = prompt.visual_mask
        clock = StepClock(self.device)
        attach = (pruner.attach(self.llm.model, visual, frames=self.num_frames, num_patches=self.num_patches)
                  if isinstance(pruner, LLMPruner) else nullcontext())
        torch.manual_seed(settings.seed)
        clock.start()
        with attach as run:
            out = self.llm.generate(
                inputs_embeds=embeds,
                attention_mask=attention,
                generation_config=generation_config(settings, self.tokenizer, self.generation_defaults),
                logits_processor=[clock],
            )
        clock.report(timer)
        outputs = [until_eos(row.tolist(), self.tokenizer.eos_token_id) for row in out]
        return outputs, lengths, getattr(run, "kept_visual", None)

    def _decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return text.removesuffix("</s>").strip()


# ----- loading helpers -----------------------------------------------------------------------------------------
def _default_dtype(config: dict[str, Any], device: torch.device) -> torch.dtype:
    """fp32 on CPU whatever the checkpoint says (bf16 matmuls are slow there); the checkpoint's dtype on CUDA."""
    if device.type == "cpu":
        return torch.float32
    declared = config.get("torch_dtype") or config.get("dtype") or "float16"
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}.get(declared, torch.float16)


def _tower_dir(path: Path, config: dict[str, Any], video_tower: str | Path | None) -> Path:
    """--video-tower, else mm_video_tower when it is a local folder (relative paths from the checkpoint)."""
    if video_tower is not None:
        tower = Path(video_tower).expanduser()
        if not tower.is_dir():
            raise CheckpointError(f"--video-tower {tower} is not a folder: pass the LanguageBind_Video_merge checkpoint folder.")
        return tower
    named = config.get("mm_video_tower")
    fix = "download LanguageBind/LanguageBind_Video_merge and pass its folder with --video-tower."
    if not named:
        raise CheckpointError(f"{path}/config.json names no video tower (mm_video_tower); {fix}")
    candidate = path / Path(named).expanduser()  # an absolute path stays itself
    if not candidate.is_dir():
        raise CheckpointError(f"{path}/config.json names the video tower {named!r}, which is not a local folder; {fix}")
    return candidate


# Llama settings that transformers 5 takes as arguments, not fields: it folds them into rope_parameters.
_LEGACY_ROPE_KEYS = ("rope_theta", "rope_scaling")


def llama_config(config: dict[str, Any], **overrides: Any) -> LlamaConfig:
    """The Llama part of an original-format config.json: LlamaConfig's fields plus the legacy RoPE settings;
    the mm_* fields, `architectures` (LlavaLlamaForCausalLM) and `model_type` ("llava") are left out."""
    kept = {k: v for k, v in config.items()
            if (k in LlamaConfig.__dataclass_fields__ or k in _LEGACY_ROPE_KEYS) and k not in ("architectures", "model_type")}
    return LlamaConfig(**kept, **overrides)


def _load_llama(path: Path, config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """transformers' own Llama from the checkpoint's shards; the projector and tower copies in them are skipped."""
    weight_files(path)  # a clear error when the weights are missing
    llama = llama_config(config)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the skipped mm_projector / tower keys are expected, not news
    hf_logging.disable_progress_bar()
    try:
        llm, info = LlamaForCausalLM.from_pretrained(
            path, config=llama, dtype=dtype, attn_implementation="sdpa", output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", []) if "rotary_emb" not in k]
    if missing:
        raise CheckpointError(f"{path} lacks LLM weights {sorted(missing)[:5]}; finish the download or check the folder.")
    # Decoding settings come from GenerationSettings alone; the checkpoint's max_length etc. must not leak in.
    llm.generation_config = GenerationConfig(
        bos_token_id=llama.bos_token_id, eos_token_id=llama.eos_token_id, pad_token_id=llama.pad_token_id
    )
    return llm.to(device).eval()


def _load_tokenizer(path: Path) -> Any:
    if not any((path / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        raise CheckpointError(f"{path} has no tokenizer.model or tokenizer.json: copy the tokenizer files from the checkpoint.")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (ImportError, ValueError, OSError) as err:
        raise CheckpointError(
            f"could not read the tokenizer in {path} ({err}); a tokenizer.model-only checkpoint needs "
            "`pip install sentencepiece protobuf`."
        ) from err
