"""The model zoo from the command line: turn a finished run into a zoo entry, or list the zoo.

    python -m stn.zoo add stn_mnist outputs/train/runs/<run>     # the run's best checkpoint
    python -m stn.zoo list

What an entry holds and how it is added: stn/inference/zoo.py; loading one: stn.loading.zoo_model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stn.errors import UserError
from stn.paths import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    adding = commands.add_parser("add", help="a finished run's best checkpoint as a zoo model")
    adding.add_argument("name")
    adding.add_argument("run_dir", type=Path)
    adding.add_argument("--data-dir", type=Path, default=ROOT / "data")
    adding.add_argument("--overwrite", action="store_true", help="replace an entry of the same name")
    commands.add_parser("list", help="the zoo's models")
    args = parser.parse_args()
    from stn.inference.zoo import add
    from stn.loading import zoo_manifest

    try:
        if args.command == "add":
            print(json.dumps(add(args.name, args.run_dir, args.data_dir, overwrite=args.overwrite), indent=2))
            return
        for name, entry in zoo_manifest().items():
            accuracy = entry.get("test_acc")
            figures = f"test acc {100 * accuracy:.2f}%" if isinstance(accuracy, float) else "test acc unknown"
            shape = f"data={entry.get('data')} ({entry.get('canvas')}px), {entry.get('parameters')} params"
            print(f"{name}: {shape}, {figures}")
            print(f"    {entry.get('command', '')}")
    except UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
