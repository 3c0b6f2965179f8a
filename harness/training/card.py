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
import pyarrow as pa
import yaml

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


def _dtype(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}" + (f", tz={t.tz}]" if t.tz else "]")
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_floating(t):
        return f"float{t.bit_width}"
    if pa.types.is_integer(t):
        return f"{'' if pa.types.is_signed_integer(t) else 'u'}int{t.bit_width}"
    raise ValueError(f"no Hub dtype for Arrow type {t}")


def _feature(name: str, t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_list(t) and pa.types.is_struct(t.value_type):
        fields = [_feature(f.name, f.type) for f in t.value_type]
        return {"name": name, "list": fields}
    if pa.types.is_struct(t):
        return {"name": name, "struct": [_feature(f.name, f.type) for f in t]}
    return {"name": name, "dtype": _dtype(t)}


def yaml_features(schema: pa.Schema) -> list[dict[str, Any]]:
    """An Arrow schema as the Hub card's `dataset_info.features` list.

    JSON lines and CSV carry no schema: a column that is null in every row of one split (no
    history hint yet, no model) would otherwise be typed differently per split and fail to load.
    """
    return [_feature(f.name, f.type) for f in schema]


def features_yaml(config_name: str, schema: pa.Schema | None) -> str:
    """The `dataset_info:` block of the front matter for `schema` ('' for None)."""
    if schema is None:
        return ""
    info = {"dataset_info": {"config_name": config_name, "features": yaml_features(schema)}}
    return yaml.safe_dump(info, sort_keys=False).rstrip()


def render_card(context: Mapping[str, Any]) -> str:
    """Render the dataset card from its template with `context` (every variable is required)."""
    return _ENV.get_template("dataset_card.md.j2").render(context)
