"""Training data: labeled (state, candidates, action, reward) examples and their export formats.

`generate_training_data` builds examples from a simulator and a policy; `export_run` turns a run
folder into supervised, preference or RL training files with a dataset card (docs/export.md);
`train_model` fits the learned scoring policy on an export (docs/training.md).
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
from harness.training.learn import TrainSummary, fit_model, train_model

__all__ = [
    "FORMATS",
    "CandidateExample",
    "ExportSummary",
    "TrainSummary",
    "TrainingExample",
    "export_run",
    "fit_model",
    "generate_training_data",
    "load_run",
    "preference_pair",
    "read_examples",
    "train_model",
    "walk_forward_split",
    "write_export",
]
