"""The command line: ``recrl data download <name> [--data-dir DIR] [--url URL] [--force]`` or ``--list``.

:func:`main` parses the arguments (its ``--help`` lists every dataset of the catalogue with what
to put where when downloading by hand), runs :func:`~recrl.data.download.install.download` and
turns a :class:`~recrl.types.RecrlError` into one ``recrl: error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from recrl.data.download.catalogue import DATASETS, ENV_VAR, data_dir
from recrl.data.download.install import download
from recrl.types import RecrlError


def _epilog() -> str:
    """The help text's list of datasets, with what to put where when downloading by hand."""
    lines = [f"data dir: --data-dir, else ${ENV_VAR}, else ./data", "",
             "datasets (to install by hand, fetch the URL and unpack it so that these files sit in "
             "DATA_DIR/FOLDER; 'file' sources are saved as is):"]
    for source in DATASETS.values():
        lines += [f"  {source.name:8s} {source.archive:6s} {source.url}",
                  f"           folder {source.folder}: {', '.join(source.expected_files)}",
                  f"           {source.description}",
                  f"           licence: {source.licence}"]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    """The ``recrl data download`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="recrl data download", description="Download, check and unpack a public dataset.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help=f"dataset to fetch: {', '.join(DATASETS)}")
    parser.add_argument("--list", action="store_true", help="list the datasets, URLs and licences")
    parser.add_argument("--data-dir", default=None, help=f"where to put it (default: ${ENV_VAR} or ./data)")
    parser.add_argument("--url", default=None, help="fetch from this URL or local file instead (a mirror)")
    parser.add_argument("--force", action="store_true", help="download again even if the files are present")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide the progress bar (shown only when stderr is a terminal anyway)")
    return parser


def _print_table() -> None:
    """Print the registry as a rich table."""
    table = Table(title="recrl datasets", show_lines=True)
    for column in ("name", "folder", "url", "licence"):
        table.add_column(column, overflow="fold")
    for source in DATASETS.values():
        table.add_row(source.name, source.folder, source.url, source.licence)
    Console().print(table)


def main(argv: list[str]) -> int:
    """``recrl data download <name> [--data-dir DIR] [--url URL] [--force]`` or ``--list``; exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    try:
        if args.list:
            _print_table()
            return 0
        if args.name is None:
            raise RecrlError(f"name a dataset to download ({', '.join(DATASETS)}) or pass --list")
        download(args.name, data_dir(args.data_dir), url=args.url, force=args.force,
                 progress=False if args.no_progress else None)
    except RecrlError as err:
        print(f"recrl: error: {err}", file=sys.stderr)
        return 2
    return 0
