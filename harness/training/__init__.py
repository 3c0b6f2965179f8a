"""Training data: labeled (state, candidates, action, reward) examples and their export formats.

`generate_training_data` builds examples from a simulator and a policy; `export_run` turns a run
folder into supervised, preference or RL training files with a dataset card (docs/export.md).
"""

from harness.training.dataset import (
    CandidateExample,
    TrainingExample,
    generate_training_data,
    preference_pair,
    walk_forward_split,
)
from harness.training.export import (
    FORMATS,
    ExportSummary,
    export_run,
    load_run,
    read_examples,
    write_export,
)

__all__ = [
    "FORMATS",
    "CandidateExample",
    "ExportSummary",
    "TrainingExample",
    "export_run",
    "generate_training_data",
    "load_run",
    "preference_pair",
    "read_examples",
    "walk_forward_split",
    "write_export",
]
