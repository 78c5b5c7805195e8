# Sequencer monitoring backbone. `make run` and `make test` are the two commands a newcomer needs.
CARGO ?= cargo
export KAFKA_PORT ?= 19092

.PHONY: all help build run run-kafka test unit-test chaos bench evaluate fuzz package lint fmt topics kafka-start kafka-stop clean

all: build

## help: this list
help:
	@awk '/^## [a-z][a-z /-]*: / { sub(/^## /, "  make "); print; next } /^## / { sub(/^## /, "       "); print }' $(firstword $(MAKEFILE_LIST))

## build: release binaries of every service, the simulator, the pipeline and the admin tool
build:
	$(CARGO) build --release --workspace --bins

## run: the whole pipeline in one process on a simulated fleet (no Kafka needed). It builds
## with the profile make test uses (dependencies optimised), so the two share one build;
## RUN_PROFILE=release for large fleets (about 6x faster, one more full build)
RUN_PROFILE ?= dev
run:
	$(CARGO) run --profile $(RUN_PROFILE) -q -p seqmon-pipeline -- $(ARGS)

## test: unit tests, then real-broker tests against Apache Kafka (fetched and started here,
## or the cluster named by KAFKA_BOOTSTRAP_SERVERS)
test:
	tools/test.sh

## chaos: kill -9 every stage 5 times in open transactions, the broker twice, pause one stage, poison
## every topic, on >= 100,000 records and a broker of its own (127.0.0.1:29092); an oracle compares
## every output with an uninterrupted run -> out/chaos/latest.json (make test runs a trimmed one)
chaos:
	tools/chaos.sh

## bench: codec, processor and Kafka stage throughput vs a raw transactional passthrough
## (same broker as make test); table on stdout, JSON in out/bench/
bench:
	tools/bench.sh $(ARGS)

## evaluate: detection sweep over simulated fleets (20 seeds x 24/200 instruments x 2/30 days x
## 1%/10% bad records, with control fleets; hours on 2 cores) and public benchmarks through
## `anomaly-detector score` -> out/evaluate/latest.json and docs/detection.md. ARGS passes options
## (e.g. ARGS="--seeds 5"); SKAB_DIR=<SKAB checkout>/data adds SKAB.
evaluate:
	tools/evaluate.sh $(ARGS)

## fuzz: the decoders and parsers (Avro, ingest frames, JSON lines, InterOp, RunInfo/RunParameters
## XML, privacy grammars and templates) for 10 million inputs: libFuzzer via cargo-fuzz on a
## nightly toolchain, else the stable mutation driver -> out/fuzz/latest.json. ARGS passes options
## (e.g. ARGS="--runs 1000000 --target avro --update-corpus")
fuzz:
	tools/fuzz.sh $(ARGS)

## package: the collector's Debian package (cargo-deb; systemd unit, settings file) in
## target/debian/, checked with dpkg-deb and systemd-analyze verify
package:
	tools/package.sh

## unit-test: tests that need no broker
unit-test:
	$(CARGO) test --workspace --exclude seqmon-integration-tests

## lint: formatting and clippy, as CI wants them
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## kafka-start / kafka-stop: the local single-node KRaft broker on 127.0.0.1:$(KAFKA_PORT)
kafka-start:
	tools/kafka/broker.sh start
kafka-stop:
	tools/kafka/broker.sh stop

## topics: create every catalogue topic on KAFKA_BOOTSTRAP_SERVERS (idempotent)
topics:
	$(CARGO) run --release -q -p seqmon-admin -- create-topics

## run-kafka: the six services as separate processes on the local broker, fed by the simulator
run-kafka:
	tools/run-kafka.sh

clean:
	$(CARGO) clean
	rm -rf .cache/kafka/run-*
