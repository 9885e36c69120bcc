"""The layering rule of ../shared/ARCHITECTURE.md, read off the import statements: the core
(``fleetvl``) imports no tier and no tool; tiers import no other tier and no tool."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIERS = ("edge_agent", "router", "cloud_worker", "controller")
TOOLS = "fleetvl_tools"


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of ``package`` imports (lazy imports included)."""
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


def test_the_core_imports_no_tier_and_no_tool() -> None:
    bad = {m: sorted(n & {*TIERS, TOOLS}) for m, n in _imports("fleetvl").items()
           if n & {*TIERS, TOOLS}}  # fmt: skip
    assert bad == {}


def test_tiers_import_no_other_tier_and_no_tool() -> None:
    bad = {}
    for tier in TIERS:
        for module, names in _imports(tier).items():
            if wrong := names & ({*TIERS, TOOLS} - {tier}):
                bad[module] = sorted(wrong)
    assert bad == {}
