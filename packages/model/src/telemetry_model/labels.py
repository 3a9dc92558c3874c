"""Parser for Prometheus label sets as DCGM exporters print them (``a="x",b="y"``)."""

from __future__ import annotations

from .errors import LabelsError

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def parse_labels(text: str) -> dict[str, str]:
    """Parse ``name="value",...`` into a dict; raise ``LabelsError`` on malformed input.

    Values may contain commas, ``=`` and the escapes ``\\\\``, ``\\"`` and ``\\n``
    of the Prometheus text format. An empty string is an empty label set.
    """
    labels: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        eq = text.find("=", i)
        if eq < 0:
            raise LabelsError(f"label at position {i} has no '='", position=i)
        name = text[i:eq].strip()
        if not name or not (name[0].isalpha() or name[0] == "_"):
            raise LabelsError(f"invalid label name {name!r}", position=i)
        if not all(c.isalnum() or c == "_" for c in name):
            raise LabelsError(f"invalid label name {name!r}", position=i)
        j = eq + 1
        if j >= n or text[j] != '"':
            raise LabelsError(f"value of label {name!r} is not quoted", position=j)
        j += 1
        chars: list[str] = []
        while True:
            if j >= n:
                raise LabelsError(f"value of label {name!r} is not terminated", position=j)
            c = text[j]
            if c == "\\":
                if j + 1 >= n or text[j + 1] not in _ESCAPES:
                    raise LabelsError(f"bad escape in label {name!r}", position=j)
                chars.append(_ESCAPES[text[j + 1]])
                j += 2
            elif c == '"':
                j += 1
                break
            else:
                chars.append(c)
                j += 1
        if name in labels:
            raise LabelsError(f"duplicate label {name!r}", position=i)
        labels[name] = "".join(chars)
        if j < n:
            if text[j] != ",":
                raise LabelsError(f"expected ',' after label {name!r}", position=j)
            j += 1
        i = j
    return labels
