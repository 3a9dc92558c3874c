"""telemetry-model: record types, DCGM CSV reader, label parser, metric catalog, wire form."""

from .catalog import METRICS, METRICS_BY_ID, METRICS_BY_NAME, Metric, metric
from .csvreader import (
    COLUMNS,
    DcgmCsvReader,
    open_csv,
    parse_row,
    read_samples,
    reader_from_text,
)
from .domain import (
    DEFAULT_MAX_FUTURE_SKEW,
    MAX_GPU_INDEX,
    MAX_LABEL_VALUE_BYTES,
    MAX_LABELS,
    MAX_SEQ,
    MAX_STREAM_BYTES,
    MAX_TEXT_BYTES,
    MAX_TS_US,
    MIN_TS_US,
    labels_problem,
    text_problem,
)
from .errors import CsvFormatError, DecodeError, LabelsError, ModelError
from .labels import parse_labels
from .records import EPOCH, Datapoint, Gpu, Sample, to_micros
from .wire import WireTemplate, decode, encode

__all__ = [
    "COLUMNS",
    "DEFAULT_MAX_FUTURE_SKEW",
    "EPOCH",
    "MAX_GPU_INDEX",
    "MAX_LABELS",
    "MAX_LABEL_VALUE_BYTES",
    "MAX_SEQ",
    "MAX_STREAM_BYTES",
    "MAX_TEXT_BYTES",
    "MAX_TS_US",
    "MIN_TS_US",
    "METRICS",
    "METRICS_BY_ID",
    "METRICS_BY_NAME",
    "CsvFormatError",
    "Datapoint",
    "DcgmCsvReader",
    "DecodeError",
    "Gpu",
    "LabelsError",
    "Metric",
    "ModelError",
    "Sample",
    "WireTemplate",
    "decode",
    "encode",
    "labels_problem",
    "metric",
    "open_csv",
    "parse_labels",
    "parse_row",
    "read_samples",
    "reader_from_text",
    "text_problem",
    "to_micros",
]
