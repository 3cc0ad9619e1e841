"""docs/design.md is the team's map: every module of the three packages is named in it."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "export", "evalsuite")


def test_every_module_is_named_in_the_design_doc():
    doc = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    modules = sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    missing = [m for m in modules if f"`{m}`" not in doc and f"{m}" not in doc]
    assert not missing, f"docs/design.md does not name: {', '.join(missing)}"


def test_the_design_doc_names_no_module_that_is_gone():
    import re

    doc = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:compress|export|evalsuite)/[\w/]+\.py)\b", doc))
    gone = sorted(m for m in named if not (ROOT / m).is_file())
    assert not gone, f"docs/design.md names modules that do not exist: {', '.join(gone)}"
