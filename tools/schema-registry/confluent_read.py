#!/usr/bin/env python3
"""Independent reader of Confluent-framed Avro records on a Kafka topic, for the schema-registry
interop test (tests/tests/schema_registry.rs): nothing of seqmon's code is used.

Each record is decoded twice, by two independent routes, which must agree:
  1. by hand: strip the 5-byte header (magic 0, big-endian schema id), fetch the writer schema by
     id from the registry (GET /schemas/ids/{id}), fastavro.schemaless_reader on the body;
  2. Confluent's own deserializer (confluent-kafka's AvroDeserializer with its
     SchemaRegistryClient), as Kafka tooling in Python reads such records.
Prints one JSON line per record: {"partition", "offset", "key", "id", "record"} (bytes as hex,
timestamps in milliseconds).
Exit 1 when a record is not in the Confluent framing, the two routes disagree, or fewer than
--count records arrive within --timeout seconds.

Usage: confluent_read.py --bootstrap H:P --topic T --registry-url URL [--user U --password P]
                         --count N [--timeout S]
Needs confluent-kafka[avro,schemaregistry] and fastavro (the interop venv; tools/test.sh).
"""

import argparse
import base64
import datetime
import io
import json
import sys
import time
import urllib.request

import fastavro
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(v):
    """The decoded value as JSON: bytes as hex, timestamp-millis (which fastavro turns into an
    aware datetime) back into milliseconds since the epoch, exactly."""
    if isinstance(v, datetime.datetime):
        return (v - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--registry-url", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()

    headers = {"Accept": "application/vnd.schemaregistry.v1+json"}
    conf = {"url": a.registry_url}
    if a.user:
        token = base64.b64encode(f"{a.user}:{a.password}".encode()).decode()
        headers["Authorization"] = "Basic " + token
        conf["basic.auth.user.info"] = f"{a.user}:{a.password}"
    schemas = {}

    def schema_by_id(sid):
        if sid not in schemas:
            req = urllib.request.Request(f"{a.registry_url}/schemas/ids/{sid}", headers=headers)
            with urllib.request.urlopen(req, timeout=10) as r:
                text = json.load(r)["schema"]
            schemas[sid] = fastavro.parse_schema(json.loads(text))
        return schemas[sid]

    deserializer = AvroDeserializer(SchemaRegistryClient(conf))
    consumer = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": f"confluent-read-{time.time_ns()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    md = consumer.list_topics(a.topic, timeout=10)
    consumer.assign([TopicPartition(a.topic, p, OFFSET_BEGINNING)
                     for p in md.topics[a.topic].partitions])
    seen = 0
    deadline = time.time() + a.timeout
    while seen < a.count and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            print(f"error: {m.error()}", file=sys.stderr)
            return 1
        v = m.value()
        if len(v) < 5 or v[0] != 0:
            print(f"error: {m.partition()}/{m.offset()} is not in the Confluent framing",
                  file=sys.stderr)
            return 1
        sid = int.from_bytes(v[1:5], "big")
        by_hand = fastavro.schemaless_reader(io.BytesIO(v[5:]), schema_by_id(sid))
        by_confluent = deserializer(v, SerializationContext(m.topic(), MessageField.VALUE))
        if by_hand != by_confluent:
            print(f"error: {m.partition()}/{m.offset()}: the two decoders disagree:\n"
                  f"  fastavro:  {by_hand}\n  confluent: {by_confluent}", file=sys.stderr)
            return 1
        print(json.dumps({"partition": m.partition(), "offset": m.offset(),
                          "key": (m.key() or b"").decode("utf-8", "replace"), "id": sid,
                          "record": plain(by_hand)}), flush=True)
        seen += 1
    consumer.close()
    if seen < a.count:
        print(f"error: {seen} of {a.count} records within {a.timeout} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
