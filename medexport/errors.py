"""The exceptions medexport raises for user errors.

Every error that a user can cause (a bad file, a bad option, a bundle edited into nonsense) is a
:class:`MedexportError`. The CLI prints these without a traceback and exits non-zero; anything else is a
bug and keeps its traceback. The few :class:`OSError` kinds a user causes by choosing where outputs go (a full
disk, a read-only folder, ...) are told apart by :func:`os_error_message`.
"""

import errno
import os


class MedexportError(Exception):
    """Base class of every user-facing error: the message says what is wrong and what to do."""


class ConfigError(MedexportError, ValueError):
    """A model configuration that cannot exist: bad mediator count, image size, unknown model name."""


class CheckpointError(MedexportError):
    """A checkpoint file that cannot be read or does not describe a mediator DiT/SiT."""


class NotAMediatorModelError(CheckpointError):
    """A plain DiT/SiT checkpoint: it has no mediator-attention parameters."""


class ExportError(MedexportError):
    """Exporting a model to ONNX failed or produced a graph medexport cannot use."""


class BackendUnavailableError(MedexportError):
    """A backend (TensorRT, ONNX Runtime, a GPU) was asked for but is not available here."""


class BundleError(MedexportError):
    """An engine bundle that is missing, incomplete, corrupt or built for another machine."""


class CalibrationError(MedexportError):
    """Calibration data that is missing, damaged, stale or recorded from another model."""


class ScheduleError(MedexportError, ValueError):
    """A mediator schedule that does not parse or names counts the bundle lacks.

    ``item`` and ``part``, where set, say which value is wrong (the ``item``-th count or fraction, from 0; part
    "count" or "fraction"), so that the parser can point at it in the text.
    """

    def __init__(self, message: str, *, item: int | None = None, part: str | None = None):
        super().__init__(message)
        self.item, self.part = item, part


class InputError(MedexportError, ValueError):
    """Inputs that a model or engine cannot take (a runner called with a label outside its classes, a tensor of the
    wrong shape or dtype): every backend refuses them alike, before running."""


class SamplingError(MedexportError):
    """Bad sampling settings, or a run that produced non-finite values."""


class DataError(MedexportError):
    """A data set that is missing, partial or not what it claims to be."""


class MissingExtraError(MedexportError, ImportError):
    """A package that an optional part of medexport needs is not installed; the message names the extra to install.

    ``module`` is the missing module, ``extra`` the extra of ``pip install "medexport[EXTRA]"`` that brings it.
    """

    def __init__(self, message: str, *, module: str, extra: str):
        super().__init__(message)
        self.name = module  # ImportError's attribute: the module that could not be imported
        self.module, self.extra = module, extra


def os_error_message(exc: OSError) -> str | None:
    """What to tell the user about ``exc``, an OSError from writing outputs; None for the kinds that are bugs.

    A full disk, a read-only or forbidden place, a name too long or a file where a folder should be are the
    user's to fix by choosing another output. Outputs are written under a temporary name and renamed when
    complete, so a failed write leaves no file that looks whole.
    """
    name = exc.filename if exc.filename is not None else exc.filename2
    path = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else "the output"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space left on the device holding {path}: free space or choose another --output; nothing was "
            f"half-written"
        )
    if exc.errno == errno.EROFS:
        return f"{path} is on a read-only file system: choose another --output"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied for {path}: choose another --output (or, for an input, make it readable)"
    if exc.errno == errno.ENAMETOOLONG:
        return f"a file name under {path} is too long for the file system: choose a shorter --output"
    if exc.errno == errno.ENOTDIR:
        return f"a part of {path} is a file, not a folder: choose another --output"
    return None
