#!/usr/bin/env python3
"""STUB of a third-party API, for tests only: an in-memory imitation of the Confluent Schema
Registry REST API (v1, the API Confluent Schema Registry, Apicurio's /apis/ccompat/v7 and
Karapace serve). It is NOT a schema registry: no persistence, no compatibility checking (a
compatibility level is stored and reported, never enforced), no schema references, no modes,
no deletion. It exists because no real registry can be started on the test machines (see
docs/schema-registry.md, "Testing"): Apicurio needs a Quarkus build whose dependencies are not
all obtainable there, and Confluent's registry and Karapace are not distributed through the
registries the machines reach.

What it does follow, from the API's documentation, is the part the project and Confluent's own
clients use: ids are registry-wide and the same schema (by Avro parsing canonical form, via
fastavro) gets the same id under every subject; registering a schema already under a subject
returns its existing id; subject versions count from 1; errors are JSON
{"error_code": N, "message": "..."} with Confluent's codes (40401 subject not found, 40402
version not found, 40403 schema not found, 42201 invalid schema, 42203 invalid compatibility
level, 40408 no subject-level compatibility, 40101 unauthorized); answers are
application/vnd.schemaregistry.v1+json.

Endpoints: GET /subjects; GET /subjects/{s}/versions; GET /subjects/{s}/versions/{v|latest};
POST /subjects/{s}/versions; POST /subjects/{s}; GET /schemas/ids/{id};
GET /schemas/ids/{id}/versions; GET|PUT /config and /config/{s}. An optional path prefix
(--base-path, e.g. /apis/ccompat/v7) is served like Apicurio's.

Usage: stub_registry.py [--port 0] [--base-path P] [--basic-auth user:password]
Prints "listening on PORT" on stdout once it accepts connections; a request log goes to stderr.
Needs fastavro (the interop venv).
"""

import argparse
import base64
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fastavro
from fastavro.schema import to_parsing_canonical_form

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
LEVELS = {"NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE",
          "FULL", "FULL_TRANSITIVE"}


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.ids = {}         # canonical form -> id
        self.schemas = {}     # id -> schema text as first registered
        self.subjects = {}    # subject -> [id, ...] (version = index + 1)
        self.config = {}      # subject -> level
        self.global_level = "BACKWARD"


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def canonical(text):
    try:
        return to_parsing_canonical_form(fastavro.parse_schema(json.loads(text)))
    except Exception as e:  # the API answers any unparsable schema with 42201
        raise ApiError(422, 42201, f"Invalid schema: {e}")


def make_handler(store, base_path, auth):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write("stub-registry: " + (fmt % args) + "\n")

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(n) or b"{}")
            except ValueError:
                raise ApiError(400, 400, "Unrecognized request body")

        def handle_any(self, method):
            try:
                if auth is not None and self.headers.get("Authorization") != auth:
                    raise ApiError(401, 40101, "Unauthorized")
                path = self.path.split("?", 1)[0]
                if not path.startswith(base_path):
                    raise ApiError(404, 404, "HTTP 404 Not Found")
                status, body = self.route(method, path[len(base_path):] or "/")
                self.answer(status, body)
            except ApiError as e:
                self.answer(e.status, {"error_code": e.code, "message": e.message})

        def do_GET(self):
            self.handle_any("GET")

        def do_POST(self):
            self.handle_any("POST")

        def do_PUT(self):
            self.handle_any("PUT")

        def route(self, method, path):
            parts = [p for p in path.split("/") if p]
            with store.lock:
                if parts == ["subjects"] and method == "GET":
                    return 200, sorted(store.subjects)
                if len(parts) >= 2 and parts[0] == "subjects":
                    return self.subject(method, parts[1], parts[2:])
                if len(parts) >= 3 and parts[:2] == ["schemas", "ids"] and method == "GET":
                    if not re.fullmatch(r"\d+", parts[2]) or int(parts[2]) not in store.schemas:
                        raise ApiError(404, 40403, "Schema not found")
                    sid = int(parts[2])
                    if parts[3:] == ["versions"]:
                        return 200, [{"subject": s, "version": i + 1}
                                     for s, ids in sorted(store.subjects.items())
                                     for i, x in enumerate(ids) if x == sid]
                    if parts[3:]:
                        raise ApiError(404, 404, "HTTP 404 Not Found")
                    return 200, {"schema": store.schemas[sid]}
                if parts and parts[0] == "config" and len(parts) <= 2:
                    return self.config(method, parts[1] if len(parts) == 2 else None)
            raise ApiError(404, 404, "HTTP 404 Not Found")

        def subject(self, method, subject, rest):
            ids = store.subjects.get(subject)
            if rest == [] and method == "POST":  # is this schema under the subject?
                schema = self.body().get("schema", "")
                form = canonical(schema)
                if ids is None:
                    raise ApiError(404, 40401, f"Subject '{subject}' not found.")
                sid = store.ids.get(form)
                if sid is None or sid not in ids:
                    raise ApiError(404, 40403, "Schema not found")
                return 200, {"subject": subject, "id": sid, "version": ids.index(sid) + 1,
                             "schema": store.schemas[sid]}
            if rest == ["versions"] and method == "GET":
                if ids is None:
                    raise ApiError(404, 40401, f"Subject '{subject}' not found.")
                return 200, list(range(1, len(ids) + 1))
            if rest == ["versions"] and method == "POST":
                request = self.body()
                if request.get("schemaType", "AVRO") != "AVRO":
                    raise ApiError(422, 42201, "Only AVRO schemas in this stub")
                schema = request.get("schema", "")
                form = canonical(schema)
                sid = store.ids.get(form)
                if sid is None:
                    sid = len(store.schemas) + 1
                    store.ids[form] = sid
                    store.schemas[sid] = schema
                ids = store.subjects.setdefault(subject, [])
                if sid not in ids:
                    ids.append(sid)
                return 200, {"id": sid}
            if len(rest) == 2 and rest[0] == "versions" and method == "GET":
                if ids is None:
                    raise ApiError(404, 40401, f"Subject '{subject}' not found.")
                v = len(ids) if rest[1] in ("latest", "-1") else (
                    int(rest[1]) if re.fullmatch(r"\d+", rest[1]) else 0)
                if not 1 <= v <= len(ids):
                    raise ApiError(404, 40402, "Version not found.")
                sid = ids[v - 1]
                return 200, {"subject": subject, "version": v, "id": sid,
                             "schema": store.schemas[sid]}
            raise ApiError(404, 404, "HTTP 404 Not Found")

        def config(self, method, subject):
            if method == "GET":
                if subject is None:
                    return 200, {"compatibilityLevel": store.global_level}
                if subject not in store.config:
                    raise ApiError(404, 40408,
                                   f"Subject '{subject}' does not have subject-level "
                                   "compatibility configured")
                return 200, {"compatibilityLevel": store.config[subject]}
            if method == "PUT":
                level = self.body().get("compatibility")
                if level not in LEVELS:
                    raise ApiError(422, 42203, "Invalid compatibility level")
                if subject is None:
                    store.global_level = level
                else:
                    store.config[subject] = level
                return 200, {"compatibility": level}
            raise ApiError(405, 405, "HTTP 405 Method Not Allowed")

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--base-path", default="")
    ap.add_argument("--basic-auth", help="user:password the stub requires")
    a = ap.parse_args()
    auth = None
    if a.basic_auth:
        auth = "Basic " + base64.b64encode(a.basic_auth.encode()).decode()
    server = ThreadingHTTPServer(("127.0.0.1", a.port),
                                 make_handler(Store(), a.base_path.rstrip("/"), auth))
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
