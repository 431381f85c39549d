"""Runs several Airflow CLI commands in one interpreter: ``python scripts/airflow_cli.py 'db migrate' 'pools import
p.json'``. Each command is parsed and run by Airflow's own CLI, exactly as ``airflow <command>`` would; what is saved
is the start-up of one ``airflow`` process per command (about 4 s of CPU each).

Arguments are split with shell rules (``shlex``); the first failing command stops the run with its exit status.
"""

from __future__ import annotations

import shlex
import sys


def main(commands: list[str]) -> int:
    from airflow.cli import cli_parser

    parser = cli_parser.get_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command))
        try:
            args.func(args)
        except SystemExit as e:  # the CLI's way of failing
            if e.code not in (None, 0):
                print(f"airflow {command} failed", file=sys.stderr)
                return e.code if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
