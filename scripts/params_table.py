"""Writes the README's parameter tables from the DAGs' Params: the Params are the one source, the tables a copy.

    . scripts/env.sh && python scripts/params_table.py          # rewrites the tables in README.md
    . scripts/env.sh && python scripts/params_table.py --check  # exit 1 when README.md is out of date

Each table sits between ``<!-- params: <dag_id> -->`` and ``<!-- /params -->``; ``tests/test_one_source_of_truth.py``
fails when one differs from what this writes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- params: (\w+) -->\n)(.*?)(<!-- /params -->)", re.S)


def default_text(value) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def table(dag) -> str:
    """The Markdown table of a DAG's Params: name, default, type and bounds, description."""
    rows = ["| param | default | type | description |", "| --- | --- | --- | --- |"]
    for name in dag.params:
        param = dag.params.get_param(name)
        schema = param.schema
        kind = schema.get("type", "")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        bounds = [f"{k} {schema[k]}" for k in ("minimum", "exclusiveMinimum", "maximum") if k in schema]
        if "enum" in schema:
            bounds.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
        kind = ", ".join([kind, *bounds])
        text = (param.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {default_text(dag.params[name])} | {kind} | {text} |")
    return "\n".join(rows) + "\n"


def render(readme: str, dags: dict) -> str:
    """``readme`` with every parameter table rewritten from ``dags`` (dag_id -> DAG)."""
    return BLOCK.sub(lambda m: m.group(1) + table(dags[m.group(2)]) + m.group(4), readme)


def main(argv: list[str]) -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        print(bag.import_errors, file=sys.stderr)
        return 1
    text = README.read_text()
    new = render(text, bag.dags)
    if "--check" in argv:
        if new != text:
            print("README.md's parameter tables are out of date: run python scripts/params_table.py",
                  file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
