"""The dataset card (README.md) of an export folder, rendered from templates/dataset_card.md.j2.

The card opens with Hugging Face YAML front matter (license, task categories, size category,
pretty name, and a `configs` entry mapping each split to its file), so
`datasets.load_dataset(export_dir, <format>)` loads the folder as written.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

_TEMPLATES = Path(__file__).with_name("templates")
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)

# Hugging Face size categories by row count (upper bounds, exclusive).
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def size_category(rows: int) -> str:
    """The Hub's `size_categories` value for a dataset of `rows` rows."""
    for bound, name in _SIZES:
        if rows < bound:
            return name
    return "1M<n<10M"


def harness_commit() -> str:
    """The git commit of the harness source tree doing the export, or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def render_card(context: Mapping[str, Any]) -> str:
    """Render the dataset card from its template with `context` (every variable is required)."""
    return _ENV.get_template("dataset_card.md.j2").render(context)
