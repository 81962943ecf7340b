"""The few exception types a user sees.

The CLI turns these into one line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

__all__ = ["PipelineError", "InputError", "ConfigError", "find_pipeline_error", "describe_error", "describe_failure"]


class PipelineError(Exception):
    """Base class of errors that the CLI reports in one line."""


class InputError(PipelineError):
    """Bad input data: names the case and the file it concerns.

    Example:
        >>> str(InputError("label has values {0, 2}", case="sub-01", path="sub-01_msk.nii.gz"))
        'sub-01: sub-01_msk.nii.gz: label has values {0, 2}'
    """

    def __init__(self, message: str, case: str | None = None, path: str | None = None):
        self.case, self.path, self.reason = case, path, message
        parts = [p for p in (case, str(path) if path else None, message) if p]
        super().__init__(": ".join(parts))


class ConfigError(PipelineError):
    """A configuration or command-line value that cannot work."""


def find_pipeline_error(err: BaseException | None) -> PipelineError | None:
    """The PipelineError behind ``err``: MONAI wraps errors raised inside transforms in RuntimeErrors."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, PipelineError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def describe_error(err: BaseException) -> str:
    """One line for a user: the PipelineError's message, else the innermost cause's type and message
    (MONAI's ``applying transform ...`` wrappers are skipped)."""
    known = find_pipeline_error(err)
    if known is not None:
        return known.reason if isinstance(known, InputError) else str(known)
    while err.__cause__ is not None and str(err).startswith("applying transform"):
        err = err.__cause__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def describe_failure(err: BaseException, path: str | None = None) -> str:
    """``FILE: reason`` for a case that failed: the file the InputError names (the damaged channel, not
    always the first), else ``path``."""
    known = find_pipeline_error(err)
    where = getattr(known, "path", None) or path
    return f"{where}: {describe_error(err)}" if where else describe_error(err)
