"""Security properties of the code itself, read from its syntax tree.

- No shell anywhere: no ``shell=True``, no ``os.system`` / ``os.popen`` / ``os.exec*`` /
  ``subprocess.getoutput``, and every process is started from an argv list (a value such
  as an account or cluster name is one argv element, never shell text).
- Every SQL statement binds its values: inside functions, what is handed to ``execute``,
  ``text`` or ``copy_expert`` is a literal, a module constant (ALL_CAPS, built at import
  time from other constants) or a SQLAlchemy expression, never a string formatted at run
  time. Migrations name objects in DDL (where PostgreSQL takes no bind parameters) only
  from constants of their own file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.joinpath("collector").rglob("*.py"), *ROOT.joinpath("billing").rglob("*.py"),
                  ROOT / "wsgi.py"])
MIGRATIONS = ROOT / "collector" / "store" / "migrations"
SQL_SINKS = {"execute", "executemany", "exec_driver_sql", "copy_expert", "text", "mogrify"}
SPAWN = {"Popen", "run", "call", "check_call", "check_output"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _constant_name(name: str) -> bool:
    return name.lstrip("_").replace("_", "").isalnum() and name.lstrip("_").isupper()


def _runtime_string(node: ast.expr) -> bool:
    """An expression that builds a string at run time: f-string, %, +, .format, .join."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return True
    if isinstance(node, ast.Call) and _name(node.func) in {"format", "join", "replace"}:
        return True
    return False


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield node


def _loop_sources(fn: ast.AST) -> dict[str, ast.expr]:
    """Loop variables of ``fn`` and what they iterate over."""
    out: dict[str, ast.expr] = {}
    for node in ast.walk(fn):
        if isinstance(node, (ast.For, ast.comprehension)):
            for target in ast.walk(node.target):
                if isinstance(target, ast.Name):
                    out[target.id] = node.iter
    return out


def _assignments(fn: ast.AST) -> dict[str, list[ast.expr]]:
    out: dict[str, list[ast.expr]] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            out.setdefault(node.target.id, []).append(node.value)
    return out


def _iterates_constants(iterable: ast.expr) -> bool:
    """A loop over a module constant, or over a literal tuple/list of string literals."""
    if isinstance(iterable, ast.Name):
        return _constant_name(iterable.id)
    if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Attribute):
        return _iterates_constants(iterable.func.value)          # CONST.items()
    if isinstance(iterable, ast.Call) and _name(iterable.func) in {"reversed", "sorted"}:
        return bool(iterable.args) and _iterates_constants(iterable.args[0])
    if isinstance(iterable, (ast.Tuple, ast.List)):
        return all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                   or isinstance(e, (ast.Tuple, ast.List)) and _iterates_constants(e)
                   for e in iterable.elts)
    return False


def sql_built_at_run_time(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for fn in _functions(tree):
        loops, assigned = _loop_sources(fn), _assignments(fn)
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Call) and _name(node.func) in SQL_SINKS and node.args):
                continue
            arg = node.args[0]
            bad = _runtime_string(arg)
            if isinstance(arg, ast.Name) and not _constant_name(arg.id):
                if arg.id in loops:
                    bad = not _iterates_constants(loops[arg.id])
                else:
                    bad = any(_runtime_string(v) for v in assigned.get(arg.id, []))
            if bad:
                found.append(f"{_rel(path)}:{node.lineno}: "
                             f"{_name(node.func)}({ast.unparse(arg)[:80]})")
    return found


def ddl_from_non_constants(path: Path) -> list[str]:
    """Migrations: every value interpolated into an f-string is a constant of the file,
    a loop variable over one, or a method call on such a variable."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    # Parameters of the file's helpers that every call passes a string literal.
    calls: dict[str, list[ast.Call]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls.setdefault(node.func.id, []).append(node)
    found = []
    for fn in _functions(tree):
        loops = _loop_sources(fn)
        literal_params = set()
        if isinstance(fn, ast.FunctionDef) and calls.get(fn.name):
            for i, arg in enumerate(fn.args.args):
                if all(len(c.args) > i and isinstance(c.args[i], ast.Constant)
                       and isinstance(c.args[i].value, str) for c in calls[fn.name]):
                    literal_params.add(arg.arg)
        for node in ast.walk(fn):
            if not isinstance(node, ast.JoinedStr):
                continue
            for value in node.values:
                if not isinstance(value, ast.FormattedValue):
                    continue
                expr = value.value
                while isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
                    expr = expr.func.value                     # query.strip()
                ok = isinstance(expr, ast.Name) and (
                    _constant_name(expr.id) or expr.id in literal_params
                    or expr.id in loops and _iterates_constants(loops[expr.id]))
                if not ok:
                    found.append(f"{_rel(path)}:{node.lineno}: {ast.unparse(value.value)}")
    return found


def shell_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        owner = node.func.value.id if (isinstance(node.func, ast.Attribute)
                                       and isinstance(node.func.value, ast.Name)) else None
        where = f"{_rel(path)}:{node.lineno}"
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            found.append(f"{where}: shell=")
        if owner == "os" and (name in {"system", "popen"} or (name or "").startswith(("exec", "spawn"))):
            found.append(f"{where}: os.{name}")
        if owner == "subprocess" and name in {"getoutput", "getstatusoutput"}:
            found.append(f"{where}: subprocess.{name}")
        if owner == "subprocess" and name in SPAWN and node.args and (
                isinstance(node.args[0], ast.JoinedStr)
                or isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(f"{where}: subprocess.{name} with a command string")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_shell_and_no_sql_formatted_at_run_time(path):
    assert shell_uses(path) == []
    if MIGRATIONS in path.parents:
        assert ddl_from_non_constants(path) == []
    else:
        assert sql_built_at_run_time(path) == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    """Each check finds its fault in a file written to contain it (so none passes by
    looking at nothing)."""
    bad = ROOT / "tests" / "unit" / "_security_bad_example.py"
    bad.write_text(
        "import os, subprocess\n"
        "def f(session, cur, account, text):\n"
        "    subprocess.run(f'sacct -A {account}', shell=True)\n"
        "    os.system('sacct')\n"
        "    subprocess.check_output('sacct -A x')\n"
        "    session.execute(text(f\"SELECT * FROM jobs WHERE account = '{account}'\"))\n"
        "    sql = 'SELECT * FROM jobs WHERE account = ' + account\n"
        "    cur.execute(sql)\n"
        "    cur.execute('SELECT %s' % account)\n"
        "    for statement in [account]:\n"
        "        cur.execute(statement)\n"
        "def ddl(op, table):\n"
        "    op.execute(f'DROP TABLE {table}')\n"
        "ddl(None, input())\n", encoding="utf-8")
    try:
        assert len(shell_uses(bad)) == 4
        assert len(sql_built_at_run_time(bad)) == 5
        assert len(ddl_from_non_constants(bad)) == 3
    finally:
        bad.unlink()
    # ... and what the code really does passes: constants, loops over constants, Core.
    good = tmp_path / "good.py"
    good.write_text(
        "_SQL = ('SELECT 1', 'SELECT 2')\nNAMES = ('a', 'b')\n"
        "def f(session, cur, stmt, select, t):\n"
        "    session.execute(select(t).where(t.c.account == 'x'))\n"
        "    for statement in _SQL:\n"
        "        cur.execute(statement)\n"
        "    cur.execute('SELECT %(a)s', {'a': 1})\n", encoding="utf-8")
    assert shell_uses(good) == sql_built_at_run_time(good) == []
    migration = tmp_path / "migration.py"
    migration.write_text(
        "NAMES = ('a', 'b')\n"
        "def _end(column):\n"
        "    return f'{column} + 1'\n"
        "X = _end('period')\n"
        "def ddl(op):\n"
        "    for name in reversed(NAMES):\n"
        "        op.execute(f'DROP VIEW reporting.{name}')\n", encoding="utf-8")
    assert ddl_from_non_constants(migration) == []
