"""The harness-neutral half of the lmms-eval plug-in (fastervlm.integrations.batched / model_args), without lmms-eval:
requests grouped by input are answered as `Pipeline.answer` answers them one by one, each video encoded and prepared
once; what a task hands over becomes one input or a clear refusal; model_args and generation_kwargs are read as
fastervlm's settings."""

from __future__ import annotations

import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hf_tiny import checkpoint
from PIL import Image

import fastervlm
from fastervlm.errors import FasterVLMError
from fastervlm.integrations.batched import (Deferred, Images, Request, VideoFile, answer_requests, check_media,
                                            cut_at_stop, frames_for, visual_from)
from fastervlm.integrations.model_args import batch_size, generation_settings, split_options
from fastervlm.models.base import GenerationSettings
from fastervlm.tiny import TOWER_DIR
from fastervlm.tiny.video import write_synthetic_video

SHORT = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("videos")
    return [write_synthetic_video(folder / f"v{seed}.mp4", seed=seed, num_frames=12) for seed in (0, 1)]


class Spy:
    """Counts the stages a pipeline runs (encode, prepare, ask) while passing every call through."""

    def __init__(self, pipeline: fastervlm.Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, list[int]] = {"encode": [], "prepare": [], "ask": []}
        for stage in self.calls:
            original = getattr(pipeline, stage)

            def spied(*args, _stage=stage, _original=original, **kwargs):
                self.calls[_stage].append(len(args[0]) if _stage == "ask" else 1)
                return _original(*args, **kwargs)

            monkeypatch.setattr(pipeline, stage, spied)


@pytest.mark.parametrize("method", ["fastervlm", "fastv"])
def test_grouped_batched_answers_equal_pipeline_answer_and_each_video_is_encoded_once(
        tiny_pipeline: fastervlm.Pipeline, videos: list[Path], method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    order = [0, 1, 0, 0, 1]  # interleaved, as a task's docs are
    requests = [Request(VideoFile(videos[v]), f"question {i} about the clip?", SHORT, label=f"doc {i}")
                for i, v in enumerate(order)]
    expected = [tiny_pipeline.answer(r.question, video=r.visual.path, method=method, reduction=0.5, generation=SHORT)
                for r in requests]
    pruner = tiny_pipeline.pruner(method, reduction=0.5)
    spy = Spy(tiny_pipeline, monkeypatch)
    answered = answer_requests(tiny_pipeline, pruner, requests, batch_size=2)
    assert [a.text for a in answered] == [e.text for e in expected]
    assert [a.output_ids for a in answered] == [e.output_ids for e in expected]
    assert [a.visual_tokens for a in answered] == [e.visual_tokens for e in expected]
    assert spy.calls["encode"] == [1, 1] and spy.calls["prepare"] == [1, 1]  # once per video
    assert spy.calls["ask"] == [2, 2, 1]  # video 0's three questions and video 1's two, two per call


def test_requests_with_different_decoding_are_asked_apart(tiny_pipeline: fastervlm.Pipeline, videos: list[Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    longer = GenerationSettings(max_new_tokens=6)
    requests = [Request(VideoFile(videos[0]), "what is it?", settings) for settings in (SHORT, longer, SHORT)]
    spy = Spy(tiny_pipeline, monkeypatch)
    answered = answer_requests(tiny_pipeline, tiny_pipeline.pruner("fastervlm", reduction=0.5), requests, batch_size=4)
    assert sorted(spy.calls["ask"]) == [1, 2]
    for answer, settings in zip(answered, (SHORT, longer, SHORT)):
        assert answer.output_ids == tiny_pipeline.answer("what is it?", video=videos[0], reduction=0.5,
                                                         generation=settings).output_ids


def test_frames_handed_over_as_images_are_sampled_as_the_video_file_is(tiny_pipeline: fastervlm.Pipeline,
                                                                        videos: list[Path]) -> None:
    with av.open(str(videos[1])) as container:
        images = [frame.to_image() for frame in container.decode(video=0)]
    from_images = frames_for(tiny_pipeline, Images(tuple(images)))
    from_file = tiny_pipeline.frames(video=videos[1])
    assert from_images.frame_indices == from_file.frame_indices
    torch.testing.assert_close(from_images.pixels, from_file.pixels, rtol=0, atol=0)


def test_deferred_inputs_are_produced_once_per_group(tiny_pipeline: fastervlm.Pipeline, videos: list[Path]) -> None:
    produced = []

    def produce() -> VideoFile:
        produced.append(1)
        return VideoFile(videos[0])

    requests = [Request(Deferred(("task", "test", 3), produce), q, SHORT) for q in ("first?", "second?")]
    answered = answer_requests(tiny_pipeline, tiny_pipeline.pruner("fastervlm", reduction=0.5), requests, batch_size=1)
    assert len(produced) == 1
    assert answered[1].text == tiny_pipeline.answer("second?", video=videos[0], reduction=0.5, generation=SHORT).text


def test_an_image_family_answers_an_image_as_pipeline_answer_does(tmp_path_factory: pytest.TempPathFactory,
                                                                  tmp_path: Path) -> None:
    pipeline = fastervlm.load(checkpoint("llava", tmp_path_factory), device="cpu")
    image_path = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image_path)
    request = Request(visual_from([str(image_path)]), "what is in the picture?", SHORT)
    (answer,) = answer_requests(pipeline, pipeline.pruner("fastervlm", reduction=0.5), [request], batch_size=1)
    assert answer.text == pipeline.answer(request.question, image=image_path, reduction=0.5, generation=SHORT).text
    with pytest.raises(FasterVLMError, match="hands over a video"):
        check_media(pipeline, VideoFile(Path("clip.mp4")))
    with pytest.raises(FasterVLMError, match="2 images for one question"):
        check_media(pipeline, Images((Image.open(image_path), Image.open(image_path))))


def test_what_a_task_hands_over_becomes_one_input_or_a_clear_refusal(tiny_pipeline: fastervlm.Pipeline) -> None:
    assert visual_from([["/data/clip.mp4"]]) == VideoFile(Path("/data/clip.mp4"))
    pictures = visual_from([Image.new("RGB", (8, 8)), [Image.new("RGB", (8, 8))]])
    assert isinstance(pictures, Images) and len(pictures.images) == 2
    refusals = {
        "text-only task": [],
        "2 videos and 0 images": ["a.mp4", "b.mp4"],
        "1 videos and 1 images": ["a.mp4", Image.new("RGB", (8, 8))],
        "dict objects": [{"array": np.zeros(16), "sampling_rate": 16000}],
    }
    for message, handed in refusals.items():
        with pytest.raises(FasterVLMError, match=message):
            visual_from(handed)
    with pytest.raises(FasterVLMError, match="hands over one image"):
        check_media(tiny_pipeline, Images((Image.new("RGB", (8, 8)),)))
    with pytest.raises(FasterVLMError, match="one size"):
        frames_for(tiny_pipeline, Images((Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8)))))


def test_errors_name_the_request_they_concern(tiny_pipeline: fastervlm.Pipeline, videos: list[Path],
                                              tmp_path: Path) -> None:
    requests = [Request(VideoFile(videos[0]), "fine?", SHORT, label="task t, doc 0"),
                Request(VideoFile(tmp_path / "gone.mp4"), "missing?", SHORT, label="task t, doc 1")]
    with pytest.raises(FasterVLMError, match=r"task t, doc 1: video file not found"):
        answer_requests(tiny_pipeline, tiny_pipeline.pruner("fastervlm", reduction=0.5), requests, batch_size=1)
    with pytest.raises(FasterVLMError, match="at least 1"):
        answer_requests(tiny_pipeline, tiny_pipeline.pruner(), requests, batch_size=0)


def test_model_args_split_into_method_settings_and_load_options(tiny_checkpoint: Path,
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    tower = str(tiny_checkpoint.parent / TOWER_DIR)
    settings, load = split_options(tiny_checkpoint, "fastervlm", {"reduction": 0.9, "video_tower": tower})
    assert settings == {"reduction": 0.9} and load == {"video_tower": tower}
    onevision = checkpoint("llava_onevision", tmp_path_factory)
    settings, load = split_options(onevision, None, {"keep": 4, "score": "received", "num_frames": 4})
    assert settings == {"keep": 4, "score": "received"} and load == {"num_frames": 4}
    with pytest.raises(FasterVLMError, match=r"reductoin: not a setting of method 'fastervlm' \(.*reduction.*\) nor a "
                                             r"load option of this checkpoint \(.*video_tower\)"):
        split_options(tiny_checkpoint, "fastervlm", {"reductoin": 0.9})
    with pytest.raises(FasterVLMError, match="fastervlm"):  # the registry's error lists the methods
        split_options(tiny_checkpoint, "no-such-method", {})


def test_fastervlm_loads_own_keyword_options_are_model_args_too(tiny_checkpoint: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from fastervlm import pipeline

    def load(model, *, device=None, dtype=None, share_prefix=True, **options):  # a load with an option of its own
        raise AssertionError("only its signature is read")

    monkeypatch.setattr(pipeline, "load", load)
    assert split_options(tiny_checkpoint, None, {"share_prefix": False, "keep": 2}) == ({"keep": 2},
                                                                                         {"share_prefix": False})


def test_generation_kwargs_become_decoding_settings_and_stop_strings() -> None:
    settings, stop = generation_settings({"max_new_tokens": 16, "temperature": 0, "do_sample": False, "until": "\n"})
    assert settings == GenerationSettings(max_new_tokens=16) and stop == ("\n",)
    settings, stop = generation_settings({"do_sample": True, "temperature": 0.2, "until": ["A", "B"]})
    assert (settings.sample, settings.temperature, settings.max_new_tokens, stop) == (True, 0.2, 1024, ("A", "B"))
    assert not generation_settings({"temperature": 0.7})[0].sample  # no do_sample: greedy, as transformers decodes
    with pytest.raises(FasterVLMError, match="num_beams=4"):
        generation_settings({"num_beams": 4})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generation_settings({"do_sample": True, "temperature": 0.5, "top_p": 0.9})
    assert any("top_p" in str(w.message) for w in caught)


@pytest.mark.parametrize("kwargs, named", [
    ({"max_new_tokens": "many"}, "max_new_tokens='many' is not a whole number"),
    ({"max_new_tokens": 16.5}, "max_new_tokens=16.5 is not a whole number"),
    ({"num_beams": [2]}, "num_beams=[2] is not a whole number"),
    ({"do_sample": True, "temperature": "warm"}, "temperature='warm' is not a number"),
    ({"do_sample": True, "temperature": float("nan")}, "temperature (--temperature) must be a finite number"),
    ({"max_new_tokens": 0}, "max_new_tokens (--max-new-tokens) must be a whole number of at least 1"),
])
def test_a_task_s_bad_generation_kwargs_are_named(kwargs: dict, named: str) -> None:
    with pytest.raises(FasterVLMError) as err:
        generation_settings(kwargs)
    assert named in str(err.value)


def test_stop_strings_and_batch_sizes() -> None:
    assert cut_at_stop("yes. no\n\nmore", ["\n\n", "."]) == "yes"
    assert cut_at_stop("no stop here", ["</s>", ""]) == "no stop here"
    assert (batch_size("3", 4), batch_size(2, 4), batch_size("auto", 4), batch_size("auto:8", 1)) == (3, 2, 4, 1)
    for bad in ("0", "many", -1):
        with pytest.raises(FasterVLMError, match="--batch_size"):
            batch_size(bad, 4)
