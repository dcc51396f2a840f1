"""Every name one tensor type goes by: in the spec, in Triton's config, on the wire (KServe v2) and in numpy.

One table, so the spec, the client, the load test and the benchmarks can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DataType:
    spec: Optional[str]  # the spec's name; None for types a spec cannot declare
    config: str  # Triton model config, e.g. TYPE_FP32
    v2: str  # KServe v2 protocol, e.g. FP32
    numpy: str  # numpy dtype name; strings travel as object arrays of bytes


TYPES: tuple[DataType, ...] = (
    DataType("bool", "TYPE_BOOL", "BOOL", "bool"),
    DataType("uint8", "TYPE_UINT8", "UINT8", "uint8"),
    DataType(None, "TYPE_UINT16", "UINT16", "uint16"),
    DataType(None, "TYPE_UINT32", "UINT32", "uint32"),
    DataType(None, "TYPE_UINT64", "UINT64", "uint64"),
    DataType("int8", "TYPE_INT8", "INT8", "int8"),
    DataType("int16", "TYPE_INT16", "INT16", "int16"),
    DataType("int32", "TYPE_INT32", "INT32", "int32"),
    DataType("int64", "TYPE_INT64", "INT64", "int64"),
    DataType("fp16", "TYPE_FP16", "FP16", "float16"),
    DataType("fp32", "TYPE_FP32", "FP32", "float32"),
    DataType("fp64", "TYPE_FP64", "FP64", "float64"),
    DataType("string", "TYPE_STRING", "BYTES", "object"),
)
BY_SPEC: dict[str, DataType] = {t.spec: t for t in TYPES if t.spec is not None}
BY_CONFIG: dict[str, DataType] = {t.config: t for t in TYPES}
BY_V2: dict[str, DataType] = {t.v2: t for t in TYPES}
