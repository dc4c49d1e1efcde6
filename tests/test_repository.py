"""The repository stands alone: nothing reaches outside it, and the vendored clips are the ones
their manifest describes."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p]


def test_no_file_refers_to_a_shared_folder_outside_the_repository():
    # Spelt in parts so that this file does not match itself.
    needles = ["../" + "shared", '"shared" / ' + '"media"', '"shared" / ' + '"benchmarks"']
    offenders = []
    for path in _tracked():
        if path.suffix in (".mp4", ".mov", ".webm", ".flac", ".png", ".safetensors") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        if any(n in text for n in needles):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


@pytest.mark.parametrize("folder", ["media", "schemas"])
def test_vendored_files_match_their_manifest(folder):
    media = ROOT / "tests" / folder
    with open(media / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    listed = {p.name for p in media.iterdir() if p.suffix not in (".tsv", ".md") and not p.name.startswith("LICENSE")}
    assert rows and {r["file"] for r in rows} == listed
    for row in rows:
        digest = hashlib.sha256((media / row["file"]).read_bytes()).hexdigest()
        assert digest == row["sha256"], row["file"]
        assert row["license"] and row["source_repo"] and row["commit"]


def test_a_copy_of_the_repository_alone_runs_the_real_clip_tests(tmp_path):
    """Only tracked files, in an empty folder: nothing beside it, the real-clip tests still run."""
    clone = tmp_path / "alone" / "repo"
    for path in _tracked():
        if path.is_file():
            target = clone / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_media.py::test_every_real_clip_decodes",
            "-rs",
        ],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "1 passed" in out.stdout and "skipped" not in out.stdout


PACKAGES = ("model", "service", "training", "clients")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules a module imports, at any depth of its code (function-level imports count)."""
    import ast

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def test_no_import_cycles_among_the_projects_modules():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # A package's __init__ re-exporting its own submodules is not a cycle of behaviour: drop
    # edges from a package to its children.
    graph = {n: {t for t in deps if not t.startswith(n + ".")} for n, deps in graph.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_module_is_over_about_400_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules().values()}
    assert {p: n for p, n in sizes.items() if n > 420} == {}


def test_clients_never_import_the_service_and_the_service_never_imports_training():
    modules = _modules()
    for name, path in modules.items():
        deps = _imports(name, path, set(modules))
        if name.startswith("clients"):
            assert not {d for d in deps if d.split(".")[0] in ("model", "service", "training")}, name
        if name.startswith("service"):
            assert not {d for d in deps if d.startswith("training")}, name
        if name.startswith("model"):
            assert not {d for d in deps if d.split(".")[0] in ("service", "training", "clients")}, name


def test_the_sdk_installs_alone_without_torch(tmp_path):
    import venv

    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    build = tmp_path / "src"
    shutil.copytree(ROOT / "clients", build / "clients", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(build / "clients")], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    check = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, clients; from clients import Client, AsyncClient; "
            "print(sorted(m for m in ('torch', 'numpy', 'transformers', 'service', 'model') "
            "if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert check.returncode == 0 and check.stdout.strip() == "[]", check.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "avchat-clients" in names and not names & {"torch", "numpy", "transformers"}


def test_the_engine_interface_the_wire_models_and_the_error_table_import_no_torch():
    modules = "service.engine, service.protocol, service.responses, service.errors, service.paths, model.errors"
    modules += ", model.modalities"
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {modules}; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_the_logic_layer_knows_no_http_and_no_route():
    serving = (ROOT / "service" / "serving.py").read_text()
    assert "starlette" not in serving and "fastapi" not in serving
    for path in ('"/v1/video/chat"', '"/v1/chat/completions"'):  # as a literal, not in a docstring
        holders = [p.name for p in (ROOT / "service").glob("*.py") if path in p.read_text()]
        assert holders == ["paths.py"], (path, holders)


def test_one_generation_stage_serves_every_caller():
    """Token ids become text in model/generation.py only: nobody else detokenises by hand."""
    offenders = []
    for name, path in _modules().items():
        if name == "model.generation":
            continue
        text = path.read_text()
        if "TextStream(" in text or "model.generate(" in text or ".tokenizer.decode(" in text:
            offenders.append(name)
    assert offenders == []


def test_the_projects_own_install_provides_the_avchat_command():
    command = Path(sys.executable).parent / "avchat"  # what `make demo` / `make test` put in .venv/bin
    out = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "chat" in out.stdout, out.stderr
