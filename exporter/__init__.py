"""robuq.exporter: QAT checkpoint -> .rq file (sources in the repository's top-level exporter/)."""
