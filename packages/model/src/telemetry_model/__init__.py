"""telemetry-model: record types, DCGM CSV reader, label parser, metric catalog, wire form."""

from .catalog import METRICS, METRICS_BY_ID, METRICS_BY_NAME, Metric, metric
from .csvreader import COLUMNS, DcgmCsvReader, parse_row, read_samples, reader_from_text
from .errors import CsvFormatError, DecodeError, LabelsError, ModelError
from .labels import parse_labels
from .records import EPOCH, Datapoint, Gpu, Sample, to_micros
from .wire import WireTemplate, decode, encode

__all__ = [
    "COLUMNS",
    "EPOCH",
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
    "metric",
    "parse_labels",
    "parse_row",
    "read_samples",
    "reader_from_text",
    "to_micros",
]
