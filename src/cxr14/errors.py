"""The project's one error base: `Cxr14Error`, an error the user can cause and fix.

Its message names the file, row or key at fault and the fix, and `cli.run_stage` prints it as
one line, `error: <message>`, with exit code 2 (`-v` adds the traceback). Anything else that
escapes a stage is a bug and keeps its traceback (exit 1).

Each subclass also keeps the builtin type it replaced (`except ValueError` still catches a bad
metadata row). The families:

- settings: `config.ConfigError` (params.yaml: unknown key, bad value, a setting that does not
  fit the data or the machine), `models.registry.UnknownModelError`;
- missing inputs: `MissingInputError` here (an earlier stage's output or a user file is absent);
- bad input data: `InputDataError` here, `data.metadata.MetadataError` (+ `ImageChangedError`),
  `data.nih_layout.NihLayoutError`, `data.boxes.BoxError`, `data.images.ImageDecodeError`
  (`UnreadableImageError`, `UnsupportedImageError`), `data.cache.CacheMismatchError`,
  `data.split.LeakageError`, `labels.UnknownFindingError`,
  `training.checkpoint.CheckpointError`, `models.registry.PretrainedWeightsError`,
  `reporting.files.ReportError`, `reporting.comparison.ComparisonError`,
  `evaluation.gradcam.ExplainError`, `deploy.predict.ModelFolderError`,
  `deploy.mlflow_model.PackageError` / `ModelInputError`, `deploy.export.ExportError`
  (+ `ExportParityError`);
- the environment: `data.nih_download.NihDownloadError` (+ download, checksum, archive and disk
  space errors), `io.OutputNotWritableError`, `tracking.TrackingUnavailableError` /
  `RecordedRunMissingError`, `InstallationError` here.

Programming errors (broken invariants, wrong argument types from code) stay builtin exceptions.
"""

from __future__ import annotations


class Cxr14Error(Exception):
    """An error the user can cause and fix; its message names the file/row/key and the fix."""


class MissingInputError(Cxr14Error, FileNotFoundError):
    """A file or folder the stage reads is missing; the message says which stage or setting makes it."""


class InputDataError(Cxr14Error, ValueError):
    """Input data the stage cannot use (too few rows, stale or inconsistent files); names the file."""


class InstallationError(Cxr14Error, RuntimeError):
    """The installed cxr14 package itself is incomplete or damaged; reinstalling fixes it."""
