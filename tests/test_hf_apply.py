"""The one-call API around transformers models: placeholder shrinking, family detection, the CLI and pipeline on
transformers checkpoints, and the clear error for vision encoders without a [CLS] token."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_tiny import SPEC, checkpoint, one_thread, processor_inputs, stock_model, tokenizer  # noqa: F401  (autouse)

import fastervlm
from fastervlm.cli import main
from fastervlm.errors import FasterVLMError, UnsupportedModelError
from fastervlm.models.base import GenerationSettings, adapter_for
from fastervlm.hf import compact, placeholder_keep_mask, run_tails
from fastervlm.tiny.hf import tiny_hf_config, tiny_hf_model

P = 9  # placeholder id in the hand-made prompts below


def test_placeholder_runs_shrink_item_by_item_in_reading_order() -> None:
    ids = torch.tensor([[1, P, P, P, P, 5, 6], [0, 1, P, P, P, P, 7]])
    keep = placeholder_keep_mask(ids, P, stock=[4, 4], kept=[2, 2])
    assert keep.tolist() == [[True, True, True, False, False, True, True], [True, True, True, True, False, False, True]]
    assert compact(ids, keep, 0).tolist() == [[1, P, P, 5, 6], [0, 1, P, P, 7]]
    assert placeholder_keep_mask(ids[:, :5], P, stock=[8], kept=[7]) is None  # already the kept count


def test_each_items_trailing_tokens_are_the_end_of_its_run() -> None:
    ids = torch.tensor([[1, P, P, P, 5, 0], [P, P, 6, P, P, P]])  # runs of 3, 2 and 3 placeholders, in reading order
    assert run_tails(ids, P, [3, 2, 3], 1).tolist() == [[False, False, False, True, False, False],
                                                        [False, True, False, False, False, True]]
    assert run_tails(ids, P, [3, 2, 3], 2)[1].tolist() == [True, True, False, False, True, True]


def test_unequal_rows_are_left_padded() -> None:
    ids = torch.tensor([[1, P, P, P, P, P, P, 5], [0, 0, 0, 1, P, P, 6, 7]])  # 2 items in row 0, 1 in row 1
    keep = placeholder_keep_mask(ids, P, stock=[3, 3, 2], kept=[1, 1, 1])
    assert compact(ids, keep, -1).tolist() == [[-1, -1, -1, 1, P, P, 5], [0, 0, 0, 1, P, 6, 7]]
    assert compact(torch.ones_like(ids), keep, 0).tolist() == [[0, 0, 0, 1, 1, 1, 1], [1] * 7]


def test_a_wrong_placeholder_count_names_both_valid_counts() -> None:
    ids = torch.tensor([[1, P, P, P, 5]])
    with pytest.raises(FasterVLMError, match=r"holds 3 video placeholder tokens.*take 4 .* or 2 \(after pruning\)"):
        placeholder_keep_mask(ids, P, stock=[4], kept=[2], what="video")


def test_original_format_video_llava_is_not_claimed_by_the_transformers_families(tiny_checkpoint: Path) -> None:
    assert adapter_for(tiny_checkpoint).family == "video-llava"
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "llava"  # the same model_type as transformers' LLaVA-1.5


def test_generate_with_the_processor_output_of_a_pruned_model_starts_with_the_user_ids(tmp_path_factory) -> None:
    model = stock_model("video_llava", tmp_path_factory)
    inputs = processor_inputs("video_llava", ["What is it?"])
    pruning = fastervlm.apply(model, method="fastervlm", reduction=0.5)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    positional = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                pixel_values_videos=inputs["pixel_values_videos"], max_new_tokens=3, do_sample=False)
    assert torch.equal(positional, out.sequences)
    stock_placeholders = int((inputs["input_ids"] == model.config.video_token_id).sum())
    kept = (SPEC.image_size // SPEC.patch_size) ** 2 // 2  # reduction 0.5 of each frame's patches
    logits = model(**inputs).logits  # a plain forward gets the shortened prompt too
    assert logits.shape[1] == inputs["input_ids"].shape[1] - stock_placeholders + SPEC.num_frames * kept
    pruning.remove()


def test_video_llava_images_go_through_the_image_tower(tmp_path_factory) -> None:
    model = stock_model("video_llava", tmp_path_factory)
    patches = (SPEC.image_size // SPEC.patch_size) ** 2  # the stock image features leave out [CLS]
    ids = torch.tensor([[tokenizer().bos_token_id] + [model.config.image_token_id] * patches + [5, 6, 7]])
    pixels = torch.randn(1, 3, SPEC.image_size, SPEC.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock = model(input_ids=ids, pixel_values=pixels).logits
        with fastervlm.apply(model, "none", keep_cls=True):
            torch.testing.assert_close(model(input_ids=ids, pixel_values=pixels).logits, stock, atol=1e-5, rtol=1e-5)
        with fastervlm.apply(model, "fastervlm", keep=3) as pruning:
            assert model(input_ids=ids, pixel_values=pixels).logits.shape[1] == ids.shape[1] - patches + 3
    assert pruning.records[0].modality == "image" and pruning.records[0].cls_scores.shape == (1, patches)


def test_real_token_counts_2056_video_tokens_become_208(tmp_path: Path) -> None:
    """Video-LLaVA-7B-hf's geometry (224 px, patch 14: 8 x 257 = 2056 video tokens) at tiny widths."""
    from fastervlm.tiny.hf import TinyHFSpec, write_tiny_hf_checkpoint

    path = write_tiny_hf_checkpoint(tmp_path, "video_llava", TinyHFSpec(image_size=224, vision_layers=2, llm_layers=2),
                                    tokenizer=tokenizer())
    pipeline = fastervlm.load(path, device="cpu")
    assert pipeline.num_patches == 256
    pixels = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    short = GenerationSettings(max_new_tokens=2)
    full = pipeline.answer("What is it?", pixels=pixels, method="none", generation=short)
    pruned = pipeline.answer("What is it?", pixels=pixels, method="fastervlm", reduction=0.9, generation=short)
    assert full.visual_tokens == 2048 and pruned.visual_tokens == 208  # [CLS] dropped by default: 8 x 26
    assert full.prompt_tokens - pruned.prompt_tokens == 2048 - 208
    with_cls = fastervlm.load(path, device="cpu", keep_cls=True)
    assert with_cls.answer("What is it?", pixels=pixels, method="none", generation=short).visual_tokens == 2056


def test_apply_checks_its_arguments(tmp_path_factory) -> None:
    model = stock_model("llava", tmp_path_factory)
    with pytest.raises(FasterVLMError, match="unknown method"):
        fastervlm.apply(model, method="nope")
    with pytest.raises(FasterVLMError, match="no setting"):
        fastervlm.apply(model, method="fastervlm", bogus=1)
    pruner = fastervlm.create_pruner("fastervlm", keep=3)
    with fastervlm.apply(model, pruner) as pruning:
        inputs = processor_inputs("llava", ["What is it?"])
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert pruning.records[0].visual_tokens == 3 and not fastervlm.remove(model)
    with pytest.raises(UnsupportedModelError, match="LlavaForConditionalGeneration"):
        fastervlm.apply(model.model, "fastervlm")  # the inner LlavaModel cannot generate


@pytest.mark.parametrize("family, encoder", [("qwen2_vl", "Qwen2-VL")])  # LLaVA-OneVision runs: test_hf_onevision
def test_encoders_without_cls_get_a_clear_error(family: str, encoder: str, tmp_path: Path) -> None:
    model = tiny_hf_model(family, tokenizer(), SPEC)
    with pytest.raises(UnsupportedModelError) as error:
        fastervlm.apply(model, "fastervlm", reduction=0.9)
    message = str(error.value)
    assert encoder in message and "no [CLS] token" in message
    assert "none" in message and "fastv" in message and "random" in message  # the methods that do apply
    assert "'fastervlm'" in message and "fastervlm.apply supports" in message
    with pytest.raises(UnsupportedModelError, match="fastervlm.apply supports .*VideoLlavaForConditionalGeneration"):
        fastervlm.apply(model, "none")  # a method without [CLS] still needs a family that fastervlm runs

    tiny_hf_config(family, tokenizer(), SPEC).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=f"{encoder}.*no \\[CLS\\] token") as error:
        fastervlm.load(tmp_path, device="cpu")
    assert all(name in str(error.value) for name in ("none", "fastv", "random", "no adapter for model_type"))


def test_llava_with_a_siglip_tower_runs_cls_free_methods_only(tmp_path_factory) -> None:
    config = tiny_hf_config("llava", tokenizer(), SPEC)
    config.vision_config = tiny_hf_config("llava_onevision", tokenizer(), SPEC).vision_config
    config.vision_feature_select_strategy = "full"
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with pytest.raises(UnsupportedModelError, match="SigLIP.*Methods that need no \\[CLS\\] token"):
        fastervlm.apply(model, "fastervlm", keep=2)
    tokens = (SPEC.image_size // SPEC.patch_size) ** 2
    ids = torch.tensor([[tokenizer().bos_token_id] + [config.image_token_id] * tokens + [5, 6]])
    pixels = torch.randn(1, 3, SPEC.image_size, SPEC.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = model(input_ids=ids, pixel_values=pixels).logits
        with fastervlm.apply(model, "none"):
            torch.testing.assert_close(model(input_ids=ids, pixel_values=pixels).logits, stock, atol=1e-5, rtol=1e-5)
        with fastervlm.apply(model, "random", keep=4) as pruning:
            shorter = model(input_ids=ids, pixel_values=pixels).logits
    assert shorter.shape[1] == ids.shape[1] - tokens + 4 and pruning.records[0].cls_scores is None


def test_cli_answer_picks_the_transformers_family(capsys, tmp_path_factory, synthetic_video: Path) -> None:
    path = checkpoint("llava_next_video", tmp_path_factory)
    code = main(["answer", "--model", str(path), "--video", str(synthetic_video), "--question", "What moves?",
                 "--device", "cpu", "--max-new-tokens", "3", "--reduction", "0.5", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    per_frame = ((SPEC.image_size // SPEC.patch_size) // 2) ** 2  # pooled tokens per frame
    keep = -(-per_frame // 2)  # round half up
    assert result["visual_tokens"] == SPEC.num_frames * keep
    assert [len(frame) for frame in result["kept_indices"]] == [keep] * SPEC.num_frames
    assert all(0 <= i < per_frame for frame in result["kept_indices"] for i in frame)
    assert result["timings"]["vision_encoder"] >= 0 and result["timings"]["llm_prefill"] >= 0


def test_image_model_answers_an_image_file(tmp_path_factory, tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(image)
    pipeline = fastervlm.load(checkpoint("llava", tmp_path_factory), device="cpu")
    answer = pipeline.answer("What is it?", image=image, reduction=0.75, generation=GenerationSettings(max_new_tokens=3))
    patches = (SPEC.image_size // SPEC.patch_size) ** 2
    assert answer.visual_tokens == patches // 4 and len(answer.kept_indices) == 1
    assert answer.cls_scores.shape == (1, patches)
    with pytest.raises(FasterVLMError, match="images: pass --image"):
        pipeline.answer("What is it?", video=image)
    with pytest.raises(FasterVLMError, match="does not apply"):
        fastervlm.load(checkpoint("llava", tmp_path_factory), device="cpu", num_frames=8)


def test_cli_keep_cls_adds_each_frame_cls(capsys, tmp_path_factory, synthetic_video: Path) -> None:
    path = checkpoint("video_llava", tmp_path_factory)
    args = ["answer", "--model", str(path), "--video", str(synthetic_video), "--question", "What moves?",
            "--device", "cpu", "--max-new-tokens", "2", "--keep", "3", "--json"]
    assert main(args) == 0
    without = json.loads(capsys.readouterr().out)
    assert main([*args, "--keep-cls"]) == 0
    with_cls = json.loads(capsys.readouterr().out)
    assert without["visual_tokens"] == SPEC.num_frames * 3
    assert with_cls["visual_tokens"] == SPEC.num_frames * 3 + SPEC.num_frames
