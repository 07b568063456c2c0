"""The process that owns the vLLM engine: `python -m fastervlm.backends.vllm_worker SOCKET`, started by
`VLLMEngine` with the Python of an environment where vLLM imports.

Why a process of its own: vLLM pins an older transformers than fastervlm does, so the two usually live in two
environments; vLLM also starts its engine core in spawned processes, which wants a `__main__` guard that a
user's script may lack. This module imports only the standard library at the top and vLLM inside functions,
so that it runs with nothing of fastervlm's dependencies. It listens on a Unix socket (the authkey comes in
the environment), answers one client, and serves three messages:

    {"start": {"model": folder, "dtype": "float32", "device": "cpu", "settings": {KEY: VALUE-string},
               "fixed": {...}}}      -> {"ready": {"engine_arguments": {...}, "max_model_len": int, ...}}
    {"generate": [embeds...], "sampling": {...}} -> {"results": [{"ids": [...], "finish": ..., timings}]}
    {"close": True}
Failures come back as {"error": message, "kind": "settings" | "device" | "engine" | "request"}.
"""

from __future__ import annotations

import difflib
import os
import pickle
import sys
import time
from multiprocessing.connection import Connection, Listener
from typing import Any

AUTHKEY_ENV = "FASTERVLM_VLLM_AUTHKEY"
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def send(connection: Connection, message: dict[str, Any]) -> None:
    """Plain pickles (tensors by value): torch's shared-memory pickling needs processes of one environment."""
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(connection: Connection) -> dict[str, Any]:
    return pickle.loads(connection.recv_bytes())


class RequestError(Exception):
    """A failure the client is told about (its `kind` says whose it is)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _parser() -> Any:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return EngineArgs.add_cli_args(FlexibleArgumentParser(exit_on_error=False))


def engine_arguments(settings: dict[str, str]) -> dict[str, Any]:
    """KEY=VALUE strings -> EngineArgs values, parsed as `vllm serve --key value` parses them (4k, 64M, JSON
    for config objects, true/false for switches); a clear error for an unknown key or a bad value."""
    import argparse

    parser = _parser()
    actions = {option[2:].replace("-", "_"): action for action in parser._actions for option in action.option_strings
               if option.startswith("--") and not option.startswith("--no-")}
    argv: list[str] = []
    for key, value in settings.items():
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(key, list(actions), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise RequestError(f"unknown vLLM engine setting {key!r}.{hint} The settings are the options of "
                               "`vllm serve --help`, written KEY=VALUE with underscores.", "settings")
        argv += _argv(key, value, action)
    try:
        parsed = vars(parser.parse_args(argv))
    except (argparse.ArgumentError, SystemExit) as err:
        raise RequestError(f"bad vLLM engine setting: {err}", "settings") from None
    return {key: parsed[action.dest] for key, action in ((k, actions[k]) for k in settings)}


def _argv(key: str, value: str, action: Any) -> list[str]:
    """One setting as the command line spells it."""
    if action.nargs != 0:
        return [action.option_strings[0], value]
    if value.lower() in TRUE:
        return [f"--{key.replace('_', '-')}"]
    if value.lower() in FALSE and f"--no-{key.replace('_', '-')}" in action.option_strings:
        return [f"--no-{key.replace('_', '-')}"]
    raise RequestError(f"engine setting {key} is a switch: write {key}=true or {key}=false, not {value!r}.",
                       "settings")


def start_engine(request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The vLLM engine on the text-only model folder, and what the client needs to know about it."""
    from vllm import LLM
    from vllm.platforms import current_platform

    arguments = engine_arguments(request["settings"])
    wanted, found = request["device"], current_platform.device_type
    if wanted != found:
        raise RequestError(f"this vLLM runs on {found or 'no device'}, not {wanted}: install the vLLM build for "
                           f"{wanted} (docs/vllm.md) or pass --device {found}.", "device")
    started = time.perf_counter()
    llm = LLM(model=request["model"], dtype=request["dtype"], **request["fixed"], **arguments)
    config = llm.llm_engine.vllm_config.model_config
    ready = {"engine_arguments": arguments, "max_model_len": config.max_model_len,
             "start_seconds": time.perf_counter() - started, "vllm_version": _version()}
    return llm, ready


def _version() -> str:
    import vllm

    return vllm.__version__


def generate(llm: Any, prompts: list[Any], sampling: dict[str, Any]) -> list[dict[str, Any]]:
    """Every prompt in one `generate` call (vLLM schedules them together); `sampling` holds SamplingParams'
    own fields (each request seeded alike, so an answer does not depend on the batch it came in)."""
    from vllm import SamplingParams

    params = SamplingParams(**sampling, detokenize=False)
    outputs = llm.generate([{"prompt_embeds": embeds} for embeds in prompts], params, use_tqdm=False)
    return [_result(output) for output in outputs]


def _result(output: Any) -> dict[str, Any]:
    """Generated ids (the EOS that ended them included) and the request's clocks, where vLLM kept them."""
    completion, stats = output.outputs[0], output.metrics
    result: dict[str, Any] = {"ids": list(completion.token_ids), "finish": completion.finish_reason}
    if stats is not None and stats.first_token_ts:
        result.update(ttft_s=stats.first_token_latency, queued_s=stats.scheduled_ts - stats.queued_ts,
                      prefill_s=stats.first_token_ts - stats.scheduled_ts,
                      decode_s=stats.last_token_ts - stats.first_token_ts)
    return result


def serve(connection: Connection) -> None:
    """Start the engine on the first message, then answer until told to close or the client goes away."""
    try:
        llm, ready = start_engine(receive(connection)["start"])
    except RequestError as err:
        send(connection, {"error": str(err), "kind": err.kind})
        return
    except Exception as err:  # noqa: BLE001 - vLLM's own errors: the client shows them with the log
        send(connection, {"error": f"{type(err).__name__}: {err}", "kind": "engine"})
        return
    send(connection, {"ready": ready})
    while True:
        try:
            message = receive(connection)
        except EOFError:
            return
        if "close" in message:
            return
        try:
            send(connection, {"results": generate(llm, message["generate"], message["sampling"])})
        except Exception as err:  # noqa: BLE001 - a bad request must not take the engine down
            send(connection, {"error": f"{type(err).__name__}: {err}", "kind": "request"})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    authkey = bytes.fromhex(os.environ.pop(AUTHKEY_ENV))
    with Listener(argv[0], family="AF_UNIX", authkey=authkey) as listener, listener.accept() as connection:
        serve(connection)
    return 0


if __name__ == "__main__":
    sys.exit(main())
