"""Importers that turn real CRM exports into canonical tables.

Each importer is a pure function ``(src_dir) -> (Tables, ImportReport)``; the CLI writes the
tables. `IMPORTERS` maps the export kind accepted by ``revcast data import KIND`` to its function.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from features.data import Tables
from features.importers.maven import ImportReport, import_maven

IMPORTERS: dict[str, Callable[[str | Path], tuple[Tables, ImportReport]]] = {"maven": import_maven}


def run_importer(kind: str, src_dir: str | Path) -> tuple[Tables, ImportReport]:
    """Run the importer for export `kind` on `src_dir`.

    Args:
        kind: Export kind, e.g. ``maven`` (case-insensitive).
        src_dir: Directory holding the export's files.

    Returns:
        Canonical tables and the import report.

    Raises:
        ValueError: `kind` is not a known export kind.
    """
    importer = IMPORTERS.get(kind.strip().lower())
    if importer is None:
        raise ValueError(f"unknown source kind '{kind}': expected one of {', '.join(sorted(IMPORTERS))}")
    return importer(src_dir)


__all__ = ["IMPORTERS", "ImportReport", "import_maven", "run_importer"]
