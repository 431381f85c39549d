"""What every spark-submit application of the pipeline does first: its command line (built from its ``Config``),
logging, and writing its resolved config."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import logging
import os
import sys
import textwrap
from collections.abc import Collection

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging() -> None:
    # stderr is what spark-submit relays to the Airflow task log, line by line.
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr, force=True)


def config_json(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True, default=str)


def run_application(parse_args, run, argv: list[str] | None, logger: logging.Logger, checks=()):
    """What every application's ``main`` does: logging set up, ``checks`` run (before any work), the command line
    (``argv``, default ``sys.argv[1:]``) parsed into its ``Config`` and logged, then ``run(cfg)``; returns its result.
    """
    setup_logging()
    for check in checks:
        check()
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    logger.info("config:\n%s", config_json(cfg))
    return run(cfg)


def set_legacy_keras() -> None:
    """hub.KerasLayer is a tf-keras (Keras 2) layer; under Keras 3 ``tf.keras`` would be Keras 3 and reject it.
    Must run before TensorFlow is imported."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def parse_bool(text: str) -> bool:
    """A boolean option's value: true/false, 1/0, yes/no (any case; Airflow renders a bool param as True)."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def field_docs(cls) -> dict[str, str]:
    """The docstring of each field of a dataclass: the string literal right below the field in the class body.

    These are the options' only descriptions; ``--help`` shows them (``build_parser``).
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source to read (a frozen build): the options still parse, without help
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default after its help, except for the required ones, which have none."""

    def _get_help_string(self, action):
        return action.help if action.required else super()._get_help_string(action)


_TYPES = {"int": int, "float": float, "str": str, "bool": parse_bool}


def flag(name: str) -> str:
    """The command-line flag of a Config field: ``num_workers`` -> ``--num-workers``."""
    return "--" + name.replace("_", "-")


def build_parser(cls, description: str, skip: Collection[str] = (), choices: dict | None = None,
                 group: Collection[str] = ()) -> argparse.ArgumentParser:
    """A parser with one option per field of the ``Config`` dataclass ``cls``, its help the field's docstring.

    A field without a default is a required option; the others default to the field's default. Fields of other
    types than str, int, float and bool, and fields that are not options, are named in ``skip``: the job adds
    those itself (with ``help=field_docs(cls)[name]``).

    Args:
        cls: the job's ``Config``.
        description: the parser's description (the job's docstring's first line).
        skip: fields the job adds itself, or that are not options.
        choices: allowed values of some fields.
        group: fields of which exactly one must be given (a required, mutually exclusive group).
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=_HelpFormatter)
    docs = field_docs(cls)
    exclusive = parser.add_mutually_exclusive_group(required=True) if group else None
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        type_name = f.type if isinstance(f.type, str) else f.type.__name__
        if type_name not in _TYPES:
            raise TypeError(f"{cls.__qualname__}.{f.name}: a {type_name} option; add it in the job and skip it here")
        kwargs = {"type": _TYPES[type_name], "help": docs.get(f.name, "").replace("%", "%%")}
        if choices and f.name in choices:
            kwargs["choices"] = choices[f.name]
        if f.name in group:
            exclusive.add_argument(flag(f.name), default=f.default, **kwargs)
        elif f.default is dataclasses.MISSING:
            parser.add_argument(flag(f.name), required=True, **kwargs)
        else:
            parser.add_argument(flag(f.name), default=f.default, **kwargs)
    return parser
