"""The exceptions medexport raises for user errors.

Every error that a user can cause (a bad file, a bad option, a bundle edited into nonsense) is a
:class:`MedexportError`. The CLI prints these without a traceback and exits non-zero; anything else is a
bug and keeps its traceback.
"""


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


class ScheduleError(MedexportError, ValueError):
    """A mediator schedule that does not parse or names counts the bundle lacks."""


class SamplingError(MedexportError):
    """Bad sampling settings, or a run that produced non-finite values."""


class DataError(MedexportError):
    """A data set that is missing, partial or not what it claims to be."""
