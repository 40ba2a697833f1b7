"""Every examples/ script, and every `planner` command the README shows, runs as a user runs it:
in a fresh process, from the repository root."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# PYTHONPATH: the scripts import the checkout even where the package is not installed.
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}

EXAMPLES = {
    "budget_sweep.py": (["--points", "3"], "6ND law"),
    "validate_preset.py": (["--preset", "tiny-llama", "--seq", "8", "--mode", "train"], "OK"),
    "fit_and_plan.py": (["--budget", "1e20"], "fitted on 240 runs"),
    "compare_hardware.py": (["--preset", "gpt2", "--days", "1"], "MFU"),
}


def test_every_example_is_tested():
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == set(EXAMPLES)


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs(script):
    args, needle = EXAMPLES[script]
    res = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert needle in res.stdout and "Traceback" not in res.stderr


def readme_commands() -> list[str]:
    """`planner ...` commands of the README: the quick start's main job and every `$ planner` line."""
    text = (ROOT / "README.md").read_text()
    quick = re.search(r"pip install \. && (planner [^#\n]+)", text)
    shown = re.findall(r"^\$ (planner .+)$", text, flags=re.M)
    return [quick.group(1).strip(), *shown]


def test_readme_has_the_two_command_quick_start():
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Quick start"):].split("```bash", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 2
    assert lines[0].startswith("pip install . && planner plan")
    assert lines[1].startswith("pip install '.[test]' && python -m pytest")


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command):
    argv = shlex.split(command)
    res = subprocess.run([sys.executable, "-m", "planner", *argv[1:]], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() and not res.stderr.strip().startswith("Traceback")
