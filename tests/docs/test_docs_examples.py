"""Every ```python block in docs/ runs, so the documentation cannot rot.

The blocks of one page run in order in one shared namespace (a later block sees the names
an earlier one defined), one test per page, on the CPU with the 8 simulated devices the
root conftest.py sets up. Blocks may ``assert`` what the prose claims, which makes the
pages self-checking.

What does not run: blocks fenced with another language (```bash, ```text, ```yaml), and a
```python block whose first line is ``# docs: skip`` (kept for code that cannot run here,
e.g. multi-host set-up; use it sparingly). Tabbed Linen/NNX examples are ordinary
```python blocks and both tabs run.

A last test builds the site with ``mkdocs build --strict`` (skipped only when mkdocs is not
installed; it is a dev dependency, so CI runs it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SKIP_MARKER = "# docs: skip"

# A fenced block: its indentation, fence, info string (language first) and body. Blocks
# inside tabs and admonitions are indented; the body is dedented by the fence's indent.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n"
    r"(?P<body>.*?)"
    r"^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, source)`` of each runnable ```python block of a page, in order."""
    blocks = []
    for match in _FENCE.finditer(text):
        words = match["info"].strip().split()
        if not words or words[0] not in ("python", "py"):
            continue
        indent = match["indent"]
        lines = match["body"].splitlines()
        body = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines)
        if body.lstrip().startswith(SKIP_MARKER):
            continue
        line = text.count("\n", 0, match.start()) + 2
        blocks.append((line, body))
    return blocks


def pages() -> list[pathlib.Path]:
    return sorted(p for p in DOCS.rglob("*.md") if python_blocks(p.read_text()))


def test_extractor_handles_indented_tabs_and_skips():
    text = (
        "```python\na = 1\n```\n\n"
        '=== "Linen"\n\n    ```python\n    b = a + 1\n    ```\n\n'
        "```bash\nexit 1\n```\n\n"
        "```python\n# docs: skip\nraise SystemExit\n```\n"
    )
    assert [src for _, src in python_blocks(text)] == ["a = 1", "b = a + 1"]
    assert [line for line, _ in python_blocks(text)] == [2, 8]


def test_docs_have_examples():
    # Guards the extractor: a broken regex would silently make every page pass.
    names = {p.relative_to(DOCS).as_posix() for p in pages()}
    assert {"getting_started.md", "guides/initializers.md", "guides/rules.md"} <= names


def run_page(page: pathlib.Path) -> None:
    """Runs a page's blocks in order in one fresh module; raises on the first failure."""
    module = types.ModuleType(f"docs_example_{page.stem}")
    # Registered while the page runs: dataclasses (and so Flax Linen modules) look their
    # defining module up in sys.modules.
    sys.modules[module.__name__] = module
    for line, source in python_blocks(page.read_text()):
        where = f"{page.relative_to(ROOT)}:{line}"
        try:
            exec(compile(source, where, "exec"), module.__dict__)
        except BaseException as error:
            raise RuntimeError(f"the example at {where} failed: {error!r}") from error


# Each page runs in its own Python process, as a user's script would: no state leaks
# between pages or into the rest of the suite. Compiling many small programs is most of
# what the examples cost, and they only need correct results, so XLA skips its expensive
# CPU optimizations there (measured: about a third less CPU time for the whole docs).
FAST_COMPILE = " ".join(
    [
        "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true",
        "--xla_cpu_use_fusion_emitters=false",
    ]
)


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_examples_run(page, tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, str(page)]
    # cwd: examples that write files write them into the test's tmp_path.
    result = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{page}:\n{result.stderr[-5000:]}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "api" / "initializers" / "index.html").is_file()


if __name__ == "__main__":
    # The child process of test_page_examples_run: python test_docs_examples.py PAGE.
    assert "--xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    with contextlib.redirect_stdout(io.StringIO()):
        run_page(pathlib.Path(sys.argv[1]).resolve())
