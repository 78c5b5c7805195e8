"""Reads Avro single-object records with fastavro, an implementation independent of ours.

Input (stdin): JSON lines {"schema": <path to .avsc>, "hex": <single-object bytes as hex>}.
For each: checks the C3 01 marker and that the header's fingerprint is fastavro's CRC-64-AVRO
fingerprint of the schema, decodes the body with fastavro.schemaless_reader, re-encodes the
value with fastavro.schemaless_writer and checks the bytes are identical. Output (stdout): one
JSON line per record, the decoded value (bytes as lists of ints), or {"error": ...}.
"""
import datetime
import io
import json
import sys
import uuid

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

parsed = {}


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(v):
    """The value as our Rust types serialize it: logical types as their underlying values."""
    if isinstance(v, datetime.datetime):
        return (v - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(v, datetime.date):
        return (v - EPOCH.date()).days
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return list(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


for line in sys.stdin:
    req = json.loads(line)
    path = req["schema"]
    if path not in parsed:
        with open(path) as f:
            raw = json.load(f)
        schema = fastavro.parse_schema(raw)
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        parsed[path] = (schema, fp)
    schema, fp = parsed[path]
    data = bytes.fromhex(req["hex"])
    try:
        if data[:2] != b"\xc3\x01":
            raise ValueError("no single-object marker")
        # fastavro writes the fingerprint's bytes little-endian, as the header holds them.
        if data[2:10] != fp:
            raise ValueError("header fingerprint is not the schema's CRC-64-AVRO fingerprint")
        body = io.BytesIO(data[10:])
        value = fastavro.schemaless_reader(body, schema, None)
        if body.tell() != len(data) - 10:
            raise ValueError("bytes left after the record")
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, value)
        if out.getvalue() != data[10:]:
            raise ValueError("fastavro re-encodes the value to different bytes")
        print(json.dumps(plain(value)))
    except Exception as e:  # reported per record, compared by the Rust test
        print(json.dumps({"error": str(e)}))
