"""Every Python and shell snippet of README.md and docs/**/*.md runs against the emulator.

The collector reads each page's fenced blocks: ``python`` blocks run in Python, ``bash``,
``sh`` and ``shell`` blocks in bash (``set -euo pipefail``), ``console`` blocks likewise (the
lines after ``$ ``). Any other fence must name its language (``json``, ``text``, ...), so no
snippet escapes by having none.

Each page runs on its own, in a fresh folder, in one process of its own (this file run as a
script): its Python blocks in order in one namespace, as in a notebook; its shell blocks in
order, the variables they export reaching the later blocks (Python included); whatever they left
running is stopped when the page ends. The folder holds ``boxes.json`` (the emulator's
``--write-boxes`` file), ``models/sam2.1-hiera-tiny`` and ``models/grounding-dino-tiny``
(random-weight models of the real architectures, in the layout ``hf download`` writes), and the
``COGNITE_*`` variables point at one emulator shared by all pages. A page holding
``<!-- docs-test: bare -->`` gets an empty folder and no ``COGNITE_*`` variables.

A snippet that cannot run here is marked on the line before its fence,
``<!-- skip: REASON -->``; each one is reported as a skipped test with its place and reason
(``pytest -ra`` lists them), so skipping is visible and deliberate.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Languages run, and how: python, or bash (``console``: only the lines after ``$ ``).
RUN = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash",
       "console": "console"}
SKIP = re.compile(r"^\s*<!--\s*skip:(.*?)-->\s*$")
MARKER = re.compile(r"<!--\s*skip\b")
BARE = "<!-- docs-test: bare -->"
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)(?P<rest>.*)$")
#: Shell variables that belong to one shell, not to the reader's session.
SHELL_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}
PAGE_TIMEOUT_S = 280


@dataclass(frozen=True)
class Snippet:
    """One fenced block: its page (relative to the repository), the line of its first code
    line (1-based), its language as written, its code and why it is skipped (or ``None``)."""

    page: str
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def runs_as(self) -> str | None:
        return RUN.get(self.lang.lower())

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse(path: Path) -> tuple[list[Snippet], list[str]]:
    """The page's fenced blocks, and its problems (a fence without a language, a skip marker
    without a reason or not right before a fence, a fence never closed)."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Snippet] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if MARKER.search(lines[i]):
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                if not FENCE.match(nxt):
                    problems.append(f"{rel}:{i + 1}: a skip marker must be on the line right "
                                    "before the fence it skips")
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"]
        skip = None
        if i > 0 and MARKER.search(lines[i - 1]):
            marked = SKIP.match(lines[i - 1])
            skip = marked.group(1).strip() if marked else ""
            if not skip:
                problems.append(f"{rel}:{i}: a skip marker needs its reason: "
                                "<!-- skip: REASON -->")
        close = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        if j == len(lines):
            problems.append(f"{rel}:{i + 1}: a fence that is never closed")
        body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip()
                for ln in lines[i + 1:j]]
        if not info:
            problems.append(f"{rel}:{i + 1}: a fence without a language: name it (python, "
                            "bash, json, text, ...)")
        elif skip is not None and info.lower() not in RUN:
            problems.append(f"{rel}:{i}: a skip marker on a {info} block, which never runs")
        out.append(Snippet(rel, i + 2, info, "\n".join(body) + "\n", skip or None))
        i = j + 1
    return out, problems


def all_snippets() -> list[Snippet]:
    return [s for p in pages() for s in parse(p)[0]]


def _runnable_pages() -> list[str]:
    found = []
    for p in pages():
        if any(s.runs_as and s.skip is None for s in parse(p)[0]):
            found.append(p.relative_to(ROOT).as_posix())
    return found


def _skipped() -> list[Snippet]:
    return [s for s in all_snippets() if s.runs_as and s.skip is not None]


# --- the page runner: this file as a script, in the page's folder -----------------------------

def _console(code: str) -> str:
    """The commands of a console block (the lines after ``$ `` and their continuations)."""
    out: list[str] = []
    going = False
    for ln in code.splitlines():
        if ln.startswith("$ "):
            out.append(ln[2:])
            going = ln.rstrip().endswith("\\")
        elif going:
            out.append(ln)
            going = ln.rstrip().endswith("\\")
        else:
            out.append("")  # output: keeps the line numbers
    return "\n".join(out) + "\n"


def _run_shell(snip: Snippet, n: int, groups: list[int]) -> None:
    """Run a shell block in bash; the variables it exported become this process's."""
    env_out = Path(f".docs-test-env-{n}")
    code = _console(snip.code) if snip.runs_as == "console" else snip.code
    # Line numbers in bash's messages are the page's: the code starts at the snippet's line.
    script = "set -euo pipefail" + "\n" * (snip.line - 1) + code + f"\nenv -0 > {env_out}\n"
    out_path, err_path = Path(f".docs-test-out-{n}"), Path(f".docs-test-err-{n}")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        # Files, not pipes: a server the block leaves running would hold a pipe open.
        proc = subprocess.Popen(["bash", "-c", script, snip.page], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        groups.append(proc.pid)
        code_ = proc.wait(timeout=PAGE_TIMEOUT_S)
    sys.stdout.write(out_path.read_text(errors="replace"))
    sys.stderr.write(err_path.read_text(errors="replace"))
    if code_ != 0:
        raise SystemExit(f"FAILED {snip.where} (bash): exit {code_}")
    exported = dict(item.split("=", 1) for item in
                    env_out.read_bytes().decode(errors="replace").split("\0") if "=" in item)
    for key in set(os.environ) - set(exported) - SHELL_OWN:
        del os.environ[key]
    for key, value in exported.items():
        if key not in SHELL_OWN and os.environ.get(key) != value:
            os.environ[key] = value
    for p in (env_out, out_path, err_path):
        p.unlink()


def run_page(plan_path: str) -> int:
    """Run the snippets of a plan (written by the test) in order; exit 1 at the first failure,
    naming its page and line."""
    import builtins
    import traceback
    import warnings

    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    sys.path[0] = os.getcwd()  # as `python script.py` run in the page's folder
    # The docs must not teach a deprecated import (the package root's moved names).
    warnings.filterwarnings("error", category=DeprecationWarning, message=r".*cogseg_ml")
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    groups: list[int] = []
    try:
        for n, raw in enumerate(plan["snippets"]):
            snip = Snippet(**raw)
            started = time.monotonic()
            print(f"== {snip.where} ({snip.runs_as})", flush=True)
            if snip.runs_as == "python":
                source = "\n" * (snip.line - 1) + snip.code  # tracebacks name the page's lines
                try:
                    exec(compile(source, str(ROOT / snip.page), "exec"), namespace)
                except BaseException:
                    traceback.print_exc()
                    print(f"FAILED {snip.where} (python)", file=sys.stderr, flush=True)
                    return 1
            else:
                try:
                    _run_shell(snip, n, groups)
                except SystemExit as exc:
                    print(exc, file=sys.stderr, flush=True)
                    return 1
            sys.stdout.flush()
            print(f"-- {snip.where}: {time.monotonic() - started:.1f} s", flush=True)
    finally:
        for pgid in groups:  # what the shell blocks left running (e.g. an emulator)
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(run_page(sys.argv[1]))


# --- the tests -----------------------------------------------------------------------------------

import pytest  # noqa: E402  (the page runner above needs none of the test machinery)

from cogseg_ml.emulator.server import Emulator  # noqa: E402
from cogseg_ml.emulator.synthetic_images import encode_image, make_dataset  # noqa: E402

#: The shared emulator's files: what the pages name.
FILES = ["pump-7.jpg", "valve-2.jpg", "synthetic_00002.png", "synthetic_00003.png"]
#: The words of the class names the pages use (the tiny detector's vocabulary).
CLASS_WORDS = ["valve", "pressure", "gauge", "flange"]


@pytest.fixture(scope="module")
def docs_emulator() -> Iterator[Emulator]:
    """One emulator for every page: four 240x320 synthetic images under /site-a/."""
    emu = Emulator(processing_time_s=0.01, concurrency=16)
    for name, im in zip(FILES, make_dataset(4, seed=1, height=240, width=320), strict=True):
        data = encode_image(im.pixels, "jpeg" if name.endswith(".jpg") else "png")
        emu.add_image(data, name, external_id=name,
                      ground_truth=[(o.category, o.mask) for o in im.objects],
                      directory="/site-a/")
    with emu:
        yield emu


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight stand-ins for the checkpoints the pages download once."""
    from cogseg_ml.backends.sam2 import save_random_checkpoint
    from cogseg_ml.detect.random_checkpoints import save_random_grounding_dino

    root = tmp_path_factory.mktemp("models")
    save_random_checkpoint(root / "sam2.1-hiera-tiny")
    save_random_grounding_dino(root / "grounding-dino-tiny", CLASS_WORDS)
    return root


def _env(tmp: Path, emu: Emulator | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COGNITE_", "IDP_"))}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONPATH": str(ROOT), "COGSEG_CACHE_DIR": str(tmp / "cache"),
                "COGSEG_PROGRESS": "0", "MPLBACKEND": "Agg"})
    if emu is not None:
        env.update(emu.env(ttl_s=3600.0))
    return env


def test_every_fence_names_its_language_and_every_skip_its_reason() -> None:
    problems = [p for page in pages() for p in parse(page)[1]]
    assert problems == []


def test_the_collector_finds_the_snippets_and_the_markers(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A page with a runnable block, a skipped one, a block in a list and a shown one; and
    the problems a page can have."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\n<!-- skip: needs a GPU -->\n```bash\n"
                    "nvidia-smi\n```\n\n- item\n\n  ```sh\n  echo hi\n  ```\n\n```json\n{}\n"
                    "```\n")
    snips, problems = parse(page)
    assert problems == []
    assert [(s.line, s.runs_as, s.skip, s.code) for s in snips] == [
        (4, "python", None, "x = 1\n"), (9, "bash", "needs a GPU", "nvidia-smi\n"),
        (15, "bash", None, "echo hi\n"), (19, None, None, "{}\n")]
    page.write_text("```\nls\n```\n\n<!-- skip: -->\n```bash\nls\n```\n\n<!-- skip: why -->\n"
                    "\n```bash\nls\n```\n\n<!-- skip: x -->\n```json\n{}\n```\n")
    problems = parse(page)[1]
    assert len(problems) == 4, problems
    assert "without a language" in problems[0] and "page.md:1" in problems[0]
    assert "needs its reason" in problems[1]
    assert "right before the fence" in problems[2]
    assert "never runs" in problems[3]


def test_a_failing_snippet_fails_its_page_naming_the_line(tmp_path: Path) -> None:
    """The runner stops at the first failure and names the page and line; shell variables
    reach later Python blocks."""
    snips = [Snippet("docs/x.md", 3, "bash", "export GREETING=hello\n", None),
             Snippet("docs/x.md", 7, "python", "import os\nassert os.environ['GREETING'] == "
                     "'hello'\nvalue = 41\n", None),
             Snippet("docs/x.md", 12, "python", "value += 1\nassert value == 43\n", None),
             Snippet("docs/x.md", 16, "python", "raise SystemExit('not reached')\n", None)]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"snippets": [asdict(s) for s in snips]}))
    proc = subprocess.run([sys.executable, __file__, str(plan)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "FAILED docs/x.md:12 (python)" in proc.stderr
    assert 'x.md", line 13' in proc.stderr  # the traceback points at the page's own line
    assert "not reached" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("page", _runnable_pages())
def test_page_snippets_run(page: str, tmp_path: Path, docs_emulator: Emulator,
                           models: Path) -> None:
    path = ROOT / page
    bare = BARE in path.read_text(encoding="utf-8")
    folder = tmp_path / "page"
    folder.mkdir()
    if not bare:
        docs_emulator.write_boxes(folder / "boxes.json")
        (folder / "models").symlink_to(models, target_is_directory=True)
    snips = [s for s in parse(path)[0] if s.runs_as and s.skip is None]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"snippets": [asdict(s) for s in snips]}))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, __file__, str(plan)], cwd=folder,
                                env=_env(tmp_path, None if bare else docs_emulator),
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=PAGE_TIMEOUT_S)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # whatever the page left behind
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)
    assert code == 0, (f"{page}: a snippet failed\n--- stdout (tail)\n"
                       f"{out.read_text()[-3000:]}\n--- stderr (tail)\n{err.read_text()[-6000:]}")
    print("".join(ln for ln in out.read_text().splitlines(True) if ln.startswith("-- ")))


@pytest.mark.parametrize("snippet", _skipped(), ids=lambda s: s.where)
def test_skipped_snippet(snippet: Snippet) -> None:
    """Each snippet marked skip, reported with its place and reason: the mark must say why
    (a few words at least), so no snippet is skipped silently."""
    reason = snippet.skip or ""
    assert len(reason.split()) >= 3, f"{snippet.where}: a skip mark needs its reason"
    pytest.skip(f"{snippet.where}: {reason}")
