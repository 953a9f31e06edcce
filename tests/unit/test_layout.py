"""The rooms of src/apt_rehearse/ and the arrows between them (doc/ARCHITECTURE.md):
data flows one way, so a module imports only from the rooms upstream of it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "apt_rehearse"

# room -> the rooms (or room.module) its modules may import from.
ALLOWED = {
    "model": {"model"},
    "plan": {"model", "plan", "sandbox.syscalls"},  # release builds apt's cache in a mount namespace of its own
    "sandbox": {"model", "sandbox"},
    "inside": {"model", "inside", "sandbox.namespaces"},
    "checks": {"model", "checks"},
    "store": {"model", "store"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("apt_rehearse"):
            parts = node.module.split(".")[1:]
            for alias in node.names:
                # "from apt_rehearse.inside import facts" names the module inside.facts.
                submodule = SRC.joinpath(*parts, alias.name + ".py").is_file()
                found.append(".".join([*parts, alias.name]) if submodule or not parts else ".".join(parts))
        elif isinstance(node, ast.Import):
            found += [alias.name.split(".", 1)[1] for alias in node.names if alias.name.startswith("apt_rehearse.")]
    return found


def test_every_module_lives_in_a_room() -> None:
    top = sorted(p.stem for p in SRC.glob("*.py"))
    assert top == ["__init__", "__main__", "rehearse"], top


def test_arrows_run_downstream_only() -> None:
    wrong = []
    for room, allowed in ALLOWED.items():
        for path in sorted((SRC / room).glob("*.py")):
            for target in _imports(path):
                if target == "__version__":
                    continue
                if not any(target == a or target.startswith(a + ".") for a in allowed):
                    wrong.append(f"{room}/{path.name} imports {target}")
    assert not wrong, wrong


def test_the_inside_room_is_loaded_before_the_sandbox_forks() -> None:
    """After pivot_root only modules already imported can run: replay.py,
    imported by rehearse.py before any fork, imports the whole room."""
    replay = set(_imports(SRC / "inside" / "replay.py"))
    room = {f"inside.{p.stem}" for p in (SRC / "inside").glob("*.py")} - {
        "inside.__init__",
        "inside.replay",
        "inside.observe",
    }
    assert room <= replay, room - replay
    assert "inside.replay" in _imports(SRC / "rehearse.py") and "inside.observe" in _imports(SRC / "rehearse.py")


def test_test_files_have_basenames_of_their_own() -> None:
    """pytest imports test files by basename (no packages here): two of a
    name in different folders stop the whole run at collection."""
    tests = SRC.parents[1] / "tests"
    names = [path.name for path in tests.rglob("test_*.py")]
    assert len(names) > 30 and sorted(set(n for n in names if names.count(n) > 1)) == []
