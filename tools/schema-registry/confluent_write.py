#!/usr/bin/env python3
"""Independent writer of Confluent-framed Avro records, for the schema-registry interop test
(tests/tests/schema_registry.rs): confluent-kafka's own AvroSerializer, as Kafka tooling in
Python writes such records; nothing of seqmon's code is used.

Reads JSON lines on stdin, {"key": str, "timestamp_ms": int, "record": {...}}, serializes each
record with the latest version registered under --subject (looked up in the registry, never
registered: auto.register.schemas is off), produces it to --topic with its key and timestamp,
and prints the produced value as hex, one line per record, in input order. A line with
"raw_hex" instead of "record" is produced as those bytes, unchanged (so one producer, in one
order, can mix the framings on a topic).
Exit 1 on any serialization or delivery failure.

Usage: confluent_write.py --bootstrap H:P --topic T --subject S --registry-url URL
                          [--user U --password P] < records.jsonl
Needs confluent-kafka[avro,schemaregistry] (the interop venv; tools/test.sh).
"""

import argparse
import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--subject", required=True)
    ap.add_argument("--registry-url", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    a = ap.parse_args()

    conf = {"url": a.registry_url}
    if a.user:
        conf["basic.auth.user.info"] = f"{a.user}:{a.password}"
    client = SchemaRegistryClient(conf)
    latest = client.get_latest_version(a.subject)
    serializer = AvroSerializer(
        client,
        latest.schema.schema_str,
        conf={"auto.register.schemas": False, "use.latest.version": True,
              "subject.name.strategy": lambda ctx, record_name: a.subject},
    )
    producer = Producer({"bootstrap.servers": a.bootstrap, "enable.idempotence": True,
                         "partitioner": "murmur2_random", "linger.ms": 5})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    ctx = SerializationContext(a.topic, MessageField.VALUE)
    for line in sys.stdin:
        item = json.loads(line)
        if "raw_hex" in item:
            value = bytes.fromhex(item["raw_hex"])
        else:
            value = serializer(item["record"], ctx)
        producer.produce(a.topic, key=item["key"].encode(), value=value,
                         timestamp=item["timestamp_ms"], on_delivery=delivered)
        producer.poll(0)
        print(value.hex())
    producer.flush(60)
    if failures:
        print(f"error: {len(failures)} records not delivered: {failures[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
