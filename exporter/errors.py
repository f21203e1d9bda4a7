"""The exporter's one error type: a refusal with a message that names the problem (CLI exit code 2)."""


class ExportError(Exception):
    """A checkpoint, configuration or option the exporter refuses; str(e) says what and where."""
