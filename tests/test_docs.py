"""The examples of README.md and the docs pages run, as written, against the current code.

Each page's ```python blocks run in order in one namespace (a later block may use an earlier
one's names), in a temporary folder; a block preceded by ``<!-- docs-test: skip REASON -->`` is
left out (the reason is required). Each ``lightning-mixup fit ...`` line of a ```bash block is
parsed by the real command with ``--print_config``, so a renamed flag or a missing config fails
here too. Docstring examples run through ``--doctest-modules`` (``pyproject.toml``).
"""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path

import pytest

from lightning_mixup import MixupCallback
from lightning_mixup.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")],
    key=lambda p: str(p),
)
PAGES = [p for p in PAGES if "_build" not in p.relative_to(ROOT).parts]

_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b((?:(?!-->).)*)-->\s*\Z", re.DOTALL)


def code_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """The ``(line, code)`` of each fenced block of ``language`` not marked to be skipped.

    Raises:
        ValueError: A skip mark without a reason.
    """
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group(1) != language:
            continue
        line = text.count("\n", 0, match.start()) + 1
        skip = _SKIP.search(text[: match.start()])
        if skip is not None:
            if not skip.group(1).strip():
                raise ValueError(f"line {line}: `docs-test: skip` needs a reason")
            continue
        blocks.append((line, match.group(2)))
    return blocks


def run_python_blocks(text: str, name: str) -> int:
    """Run the page's python blocks in order in one namespace; the number run."""
    namespace: dict[str, object] = {"__name__": f"docs_{name}"}
    blocks = code_blocks(text, "python")
    for line, code in blocks:
        # Pad with blank lines so a traceback names the page's own line numbers.
        exec(compile("\n" * line + code, name, "exec"), namespace)
    return len(blocks)


def cli_commands(text: str) -> list[list[str]]:
    """The arguments of each ``lightning-mixup fit|validate|test|predict`` in the bash blocks."""
    commands = []
    for _, code in code_blocks(text, "bash"):
        for statement in code.replace("\\\n", " ").splitlines():
            for part in statement.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["lightning-mixup"] and words[1:2] in (
                    ["fit"],
                    ["validate"],
                    ["test"],
                    ["predict"],
                ):
                    commands.append(words[1:])
    return commands


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


PYTHON_PAGES = [p for p in PAGES if code_blocks(p.read_text(encoding="utf-8"), "python")]
CLI_PAGES = [p for p in PAGES if cli_commands(p.read_text(encoding="utf-8"))]


def test_the_pages_with_examples_are_found():
    names = {_page_id(p) for p in PYTHON_PAGES}
    assert {"README.md", "docs/getting_started.md", "docs/mixing.md"} <= names
    assert "README.md" in {_page_id(p) for p in CLI_PAGES}


#: A page whose examples import these trains third-party modules: marked like tests/test_clients.py.
_CLIENTS = re.compile(r"^\s*(?:from|import)\s+(?:torchgeo|timm|transformers)\b", re.MULTILINE)


def _python_param(page: Path) -> object:
    text = page.read_text(encoding="utf-8")
    marks = [pytest.mark.clients] if _CLIENTS.search(text) else []
    return pytest.param(page, marks=marks, id=_page_id(page))


@pytest.mark.parametrize("page", [_python_param(p) for p in PYTHON_PAGES])
def test_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write checkpoints into the working folder
    assert run_python_blocks(page.read_text(encoding="utf-8"), _page_id(page)) >= 1


@pytest.mark.parametrize("page", CLI_PAGES, ids=_page_id)
def test_cli_examples_parse(page, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the commands name example configs relative to the checkout
    monkeypatch.setattr("sys.argv", ["lightning-mixup"])
    for args in cli_commands(page.read_text(encoding="utf-8")):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--print_config"])
        assert exit_info.value.code in (0, None), args
        printed = capsys.readouterr().out
        assert "trainer:" in printed, args


def test_a_renamed_argument_fails_the_example():
    page = "```python\nfrom lightning_mixup import MixupCallback\nMixupCallback(alpah=0.4)\n```\n"
    with pytest.raises(TypeError, match="alpah"):
        run_python_blocks(page, "renamed")


def test_a_renamed_flag_fails_the_command(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["lightning-mixup"])
    (args,) = cli_commands(
        "```bash\nlightning-mixup fit --config examples/digits.yaml --trainer.callbacks.alpah=1\n```\n"
    )
    # Recent jsonargparse exits with status 2; 4.27 (the oldest we support) raises a ValueError.
    with pytest.raises((SystemExit, ValueError)) as refused:
        main([*args, "--print_config"])
    if isinstance(refused.value, SystemExit):
        assert refused.value.code == 2
        assert "alpah" in capsys.readouterr().err
    else:
        assert "alpah" in str(refused.value)


def test_skipped_blocks_need_a_reason():
    marked = "<!-- docs-test: skip needs a GPU -->\n```python\nraise SystemExit\n```\n"
    assert code_blocks(marked, "python") == []
    with pytest.raises(ValueError, match="needs a reason"):
        code_blocks("<!-- docs-test: skip -->\n```python\nraise SystemExit\n```\n", "python")


def test_blocks_and_commands_are_read_as_written():
    text = (
        "intro\n```python\nx = 1\n```\n\n```bash\npip install -e . && lightning-mixup fit "
        "--config a.yaml \\\n    --trainer.max_epochs=2\nlightning-mixup tune --config a.yaml\n```\n"
    )
    assert code_blocks(text, "python") == [(2, "x = 1\n")]
    assert cli_commands(text) == [["fit", "--config", "a.yaml", "--trainer.max_epochs=2"]]


def _docs_extension():
    pytest.importorskip("sphinx", reason="the docs extra is not installed")
    import importlib.util

    path = ROOT / "docs" / "_ext" / "lightning_mixup_docs.py"
    spec = importlib.util.spec_from_file_location("lightning_mixup_docs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_build_refuses_an_args_section_that_does_not_match_the_signature(monkeypatch):
    extension = _docs_extension()
    warnings = []
    monkeypatch.setattr(extension.logger, "warning", lambda msg, *a: warnings.append(msg % a))

    def mix(alpha: float, ramp_len: int) -> None:
        """Mix.

        Args:
            alpha: Concentration.
            ramp_epochs: The old name of ``ramp_len``.
        """

    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    lines = GoogleDocstring(inspect.getdoc(mix), Config(), what="function").lines()
    extension.check_arguments(None, "function", "lightning_mixup.mix", mix, None, lines)
    assert warnings == [
        "lightning_mixup.mix: `Args:` names ['ramp_epochs'], which the signature does not have",
        "lightning_mixup.mix: `Args:` does not describe ['ramp_len']",
    ]
    warnings.clear()
    extension.check_arguments(
        None,
        "class",
        "lightning_mixup.MixupCallback",
        MixupCallback,
        None,
        GoogleDocstring(inspect.getdoc(MixupCallback), Config(), what="class").lines(),
    )
    assert warnings == []  # every argument of MixupCallback is described, and no other
