"""Typed errors: the library raises these, the CLI prints them as one line `Error: ...`."""


class PosresampleError(Exception):
    """Base class for every error a user can cause and fix."""


class DatasetError(PosresampleError):
    """The dataset path or id cannot be read as UD data."""


class ProbeError(PosresampleError):
    """The probe file is missing, corrupt, or does not fit the model."""


class ModelError(PosresampleError):
    """The model or tokenizer cannot be loaded or does not fit the request."""


class DatabaseError(PosresampleError):
    """The database cannot be opened, or holds no data for the request."""


class ConfigError(PosresampleError):
    """Options that contradict each other or an existing scan."""


class ExportError(PosresampleError):
    """The export's output cannot be written (missing folder, a folder as output, a full disk)."""


class TaggerError(PosresampleError):
    """The tagger spec, folder or package cannot be used (not a pipeline, no UPOS tags)."""
