"""The dependency rules of ARCHITECTURE.md, checked on the source: what each layer may import, and that nothing
outside the method registry names a method."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fastervlm"


def _modules(folder: Path = SRC) -> dict[str, ast.Module]:
    return {str(path.relative_to(SRC)): ast.parse(path.read_text()) for path in sorted(folder.rglob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    """Every module a file imports (at any depth: lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _fastervlm_imports(tree: ast.Module) -> set[str]:
    return {name for name in _imports(tree) if name.startswith("fastervlm.")}


def test_the_core_imports_only_torch_and_the_errors() -> None:
    for name in ("selection.py", "scoring.py", "capture.py"):
        imports = _imports(_modules()[name])
        allowed = {"torch", "math", "__future__", "collections.abc", "typing", "fastervlm.errors"}
        assert {i for i in imports if i.split(".")[0] not in ("torch", "__future__")} <= allowed | {
            f"{module}.{name}" for module in allowed for name in ("annotations", "Callable", "Any", "BudgetError")
        }, name


def test_methods_import_no_adapter_engine_or_caller_and_the_registry_no_method() -> None:
    forbidden = ("fastervlm.models", "fastervlm.engine", "fastervlm.pipeline", "fastervlm.hf", "fastervlm.cli",
                 "fastervlm.eval", "fastervlm.bench", "fastervlm.show", "fastervlm.web")
    for name, tree in _modules(SRC / "methods").items():
        bad = [i for i in _fastervlm_imports(tree) if i.startswith(forbidden)]
        assert not bad, f"{name} imports {bad}"
    registry = _fastervlm_imports(_modules()["methods/registry.py"])
    assert registry <= {"fastervlm.errors", "fastervlm.errors.BudgetError", "fastervlm.errors.UnsupportedModelError",
                        "fastervlm.methods.base", "fastervlm.methods.base.BUDGET_PARAMETERS",
                        "fastervlm.methods.base.CLS_SCORES", "fastervlm.methods.base.Pruner"}


def _adapter_modules() -> set[str]:
    """Modules of models/ that register a family."""
    return {name for name, tree in _modules(SRC / "models").items()
            if any(isinstance(d, ast.Name) and d.id == "register_adapter"
                   for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for d in node.decorator_list)}


def test_adapters_import_no_other_adapter_and_no_caller() -> None:
    adapters = {f"fastervlm.models.{Path(name).stem}" for name in _adapter_modules()}
    assert len(adapters) >= 4
    callers = ("fastervlm.cli", "fastervlm.eval", "fastervlm.bench", "fastervlm.show", "fastervlm.web",
               "fastervlm.pipeline", "fastervlm.demo")
    for name, tree in _modules(SRC / "models").items():
        own = f"fastervlm.models.{Path(name).stem}"
        imported = {i for i in _fastervlm_imports(tree)}
        assert not [i for i in imported if i.startswith(callers)], name
        if own in adapters:
            others = {a for a in adapters - {own} if any(i == a or i.startswith(a + ".") for i in imported)}
            assert not others, f"{name} imports the adapters {others}"


def test_nothing_outside_models_imports_a_transformers_model_class() -> None:
    import transformers
    from transformers import PreTrainedModel

    for name, tree in _modules().items():
        if name.startswith("models/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "transformers":
                module = __import__(node.module, fromlist=["_"])
                for alias in node.names:
                    value = getattr(module, alias.name, None) or getattr(transformers, alias.name, None)
                    assert not (isinstance(value, type) and issubclass(value, PreTrainedModel)), f"{name}: {alias.name}"


def _method_names() -> set[str]:
    from fastervlm.methods import list_methods

    return set(list_methods())


REGISTRY_CALLS = {"create_pruner", "pruner", "get_method", "apply", "has_setting", "method_settings", "BenchConfig",
                  "Cell"}


def test_nothing_outside_the_registry_compares_or_hard_codes_a_method_name() -> None:
    """No `x == "fastv"`, no `create_pruner("none")`, no `method="fastervlm"` outside methods/: callers ask the
    registry (default_method, baseline_method, featured_methods, each class's declarations)."""
    names = _method_names()
    offences = []
    for path, tree in _modules().items():
        if path.startswith("methods/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                offences += [f"{path}:{node.lineno}" for side in sides
                             if isinstance(side, ast.Constant) and side.value in names]
            elif isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                values = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "method")]
                if func in REGISTRY_CALLS:
                    offences += [f"{path}:{node.lineno}" for value in values
                                 if isinstance(value, ast.Constant) and value.value in names]
    assert not offences, offences


def test_nothing_imports_the_web_page_but_its_command() -> None:
    for name, tree in _modules().items():
        if name.startswith("web/") or name == "cli/web.py":
            continue
        assert not [i for i in _fastervlm_imports(tree) if i.startswith("fastervlm.web")], name


def test_cli_and_web_hold_no_pruning_or_inference_logic() -> None:
    inner = ("fastervlm.selection", "fastervlm.scoring", "fastervlm.capture", "fastervlm.engine", "fastervlm.models.")
    for folder in ("cli", "web"):
        for name, tree in _modules(SRC / folder).items():
            bad = [i for i in _fastervlm_imports(tree) if i.startswith(inner) and not i.startswith("fastervlm.models.base")]
            assert not bad, f"{folder}/{name} imports {bad}"


def test_only_the_lmms_eval_integration_imports_lmms_eval() -> None:
    """lmms-eval is an optional extra: one module imports it, and lmms-eval loads that module (entry point)."""
    importers = [name for name, tree in _modules().items() if any(i.split(".")[0] == "lmms_eval" for i in _imports(tree))]
    assert importers == ["integrations/lmms_eval.py"]


@pytest.mark.parametrize("module", ["fastervlm", "fastervlm.pipeline", "fastervlm.engine", "fastervlm.hf",
                                    "fastervlm.integrations", "fastervlm.integrations.batched"])
def test_importing_the_library_loads_no_heavy_optional_package(module: str) -> None:
    code = (f"import sys, {module}\n"
            "heavy = ['gradio', 'openai', 'matplotlib', 'torch.distributed.run', 'fastervlm.web', 'vllm', 'lmms_eval']\n"
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_code_and_docs_cite_nothing_outside_the_repository() -> None:
    """A user's clone has only the repository: no comment or page may send a reader to notes it does not have."""
    import re

    root = SRC.parent.parent
    files = [*SRC.rglob("*.py"), *SRC.rglob("*.toml"), *(root / "docs").glob("*.md"), root / "README.md",
             root / "ARCHITECTURE.md"]
    pattern = re.compile(r"\.\./shared|conventions\.md|spec section|\(spec \d|spec \d+\.\d+")
    cited = [f"{path.relative_to(root)}: {match.group(0)}" for path in files
             for match in pattern.finditer(path.read_text())]
    assert not cited, cited
