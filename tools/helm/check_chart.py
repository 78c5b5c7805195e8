#!/usr/bin/env python3
"""Checks rendered chart manifests (`helm template ... | check_chart.py`) against Kubernetes'
Pod Security Standard "restricted" (the fields its admission controller checks, as documented
at kubernetes.io/docs/concepts/security/pod-security-standards) and the chart's own rules: a
read-only root filesystem, no service-account token, and a PodDisruptionBudget for every
long-running workload. Our own checker of those documented fields, not the admission controller.

Also:
- every manifest of a built-in kind against the Kubernetes JSON schema (strict: unknown fields
  fail) of --kube-version, default that which tools/helm/helm.sh's Helm renders for, with the
  PyPI package kubernetes-validate;
- the custom resources, which that schema does not hold (ServiceMonitor, PrometheusRule:
  monitoring.coreos.com/v1; ScaledObject, TriggerAuthentication: keda.sh/v1alpha1; KafkaUser:
  kafka.strimzi.io/v1beta2), by our own structural checks of the fields their documentation
  requires, and against the rest of the render (what a ServiceMonitor selects, a ScaledObject's
  target, consumer group and topics); a PrometheusRule's spec also goes through
  `promcheck rules` (tools/promcheck: Prometheus' rulefmt and PromQL parser);
- probes (startup, liveness and readiness on the metrics port) and the prometheus.io/port
  annotation (equal to the metrics port) of every long-running workload;
- the Grafana dashboards, those rendered into ConfigMaps and the chart's files/dashboards/*.json:
  valid JSON, unique panel ids, every query parses (promcheck, Grafana's variables replaced) and,
  like every alert expression, names only metrics of the components' metrics contract (CONTRACT
  below).
Exit 1 with one line per violation.

Options: --kube-version X.Y, --promcheck BIN (default: $PROMCHECK, else
tools/promcheck/promcheck.sh path, which builds it if needed)."""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

try:
    import kubernetes_validate
except ImportError:
    sys.exit("check_chart: needs the PyPI package kubernetes-validate (pip install kubernetes-validate)")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "seqmon"
# The Kubernetes version Helm v3.22 (tools/helm/helm.sh) lints and renders for
# (.Capabilities.KubeVersion, from its client-go v0.37).
KUBE_VERSION = "1.37"

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}


def pod_spec(doc):
    kind = doc["kind"]
    if kind == "Pod":
        return doc["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def check_pod(name, spec):
    bad = []
    psc = spec.get("securityContext") or {}
    if spec.get("automountServiceAccountToken") is not False:
        bad.append("mounts the service-account token")
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(f):
            bad.append(f"{f} is set")
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {v['name']} is of a kind restricted forbids: {sorted(kinds)}")
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    for c in containers:
        csc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if csc.get("privileged"):
            bad.append(f"{where} is privileged")
        if csc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation is not false")
        drop = ((csc.get("capabilities") or {}).get("drop")) or []
        if "ALL" not in drop:
            bad.append(f"{where}: capabilities do not drop ALL")
        added = set(((csc.get("capabilities") or {}).get("add")) or []) - {"NET_BIND_SERVICE"}
        if added:
            bad.append(f"{where}: adds capabilities {sorted(added)}")
        if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            bad.append(f"{where}: runAsNonRoot is not true")
        if (csc.get("runAsUser", psc.get("runAsUser")) or 0) == 0:
            bad.append(f"{where}: runs as user 0")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{where}: seccompProfile is not RuntimeDefault or Localhost")
        if csc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{where}: root filesystem is writable")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                bad.append(f"{where}: uses hostPort {p['hostPort']}")
    return [f"{name}: {b}" for b in bad]


# The metrics contract: what every stage serves (each series with stage="<stage>"), what the
# ingest gateway and the alert dispatcher serve (stage="ingest-gateway" / "alert-dispatcher"),
# and the process_* metrics of each. A dashboard or rule naming anything else names nothing.
HISTOGRAMS = {
    "seqmon_transaction_duration_seconds", "seqmon_batch_records", "seqmon_event_to_commit_seconds",
    "seqmon_restore_duration_seconds",
    "seqmon_batches_per_transaction",  # gateway
    "seqmon_delivery_latency_seconds",  # dispatcher
}
CONTRACT = {
    # stages
    "seqmon_input_records_total", "seqmon_accepted_records_total",
    "seqmon_dead_letter_records_total", "seqmon_output_records_total", "seqmon_transactions_total",
    "seqmon_consumer_lag_records", "seqmon_assigned_partitions", "seqmon_rebalances_total",
    "seqmon_consumer_errors_total", "seqmon_restored_state_keys_total", "seqmon_restoring",
    "seqmon_state_quarantined_total", "seqmon_state_restore_failing",
    "seqmon_ready", "seqmon_build_info",
    # ingest gateway (formerly ingest_gateway_*)
    "seqmon_requests_total", "seqmon_records_total", "seqmon_tls_handshake_failures_total",
    "seqmon_connections", "seqmon_receipts", "seqmon_receipts_evicted", "seqmon_writer_up",
    # alert dispatcher (formerly dispatcher_*)
    "seqmon_deliveries_total", "seqmon_in_flight", "seqmon_circuit_state",
    "seqmon_alertmanager_firing", "seqmon_heartbeat_timestamp_seconds",
    # every component
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_start_time_seconds", "process_open_fds", "process_max_fds", "process_threads",
} | {h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
# Rules may also use what Prometheus and kube-state-metrics provide.
RULE_METRICS = CONTRACT | {"up", "kube_pod_container_status_restarts_total"}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
    "unless", "inf", "nan", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "limitk", "limit_ratio",
}


def metric_names(expr):
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names, strings, durations or numbers."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    found = re.findall(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:]*\s*\()", s)
    return {w for w in found if w.lower() not in PROMQL_WORDS}


# Prometheus durations, as the Operator's CRDs require them.
DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")
DURATION_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


def seconds(duration):
    return sum(int(n) * DURATION_UNITS[u] for n, u in re.findall(r"(\d+)(ms|[ywdhms])", duration))


def selects(selector, labels):
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) matches labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op)
        if not ok:
            return False
    return True


def kube_schema(d, version):
    """The Kubernetes JSON schema (strict) of a built-in kind."""
    try:
        kubernetes_validate.validate(d, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path) or "(top)"
        return [f"{where}: {e.message} (Kubernetes {e.version} schema)"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message]
    return []


def container_env(workload, name):
    for c in pod_spec(workload)["containers"]:
        for e in c.get("env") or []:
            if e["name"] == name and "value" in e:
                return e["value"]
    return None


def check_probes(w):
    """Startup, liveness and readiness probes on the metrics port, and prometheus.io/port."""
    bad = []
    template = w["spec"]["template"]
    for c in template["spec"]["containers"]:
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        if "metrics" not in ports:
            bad.append(f"container {c['name']}: no port named metrics")
            continue
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = (c.get(probe) or {}).get("httpGet") or {}
            if get.get("port") not in ("metrics", ports.get("metrics")):
                bad.append(f"container {c['name']}: no {probe} on the metrics port")
        if ((c.get("livenessProbe") or {}).get("httpGet") or {}).get("path") != "/healthz":
            bad.append(f"container {c['name']}: livenessProbe is not /healthz")
        annotations = template["metadata"].get("annotations") or {}
        if "prometheus.io/scrape" in annotations and \
                annotations.get("prometheus.io/port") != str(ports["metrics"]):
            bad.append(f"prometheus.io/port {annotations.get('prometheus.io/port')!r} is not the "
                       f"metrics port {ports['metrics']}")
    return bad


def check_service_monitor(d, docs):
    bad = []
    spec = d.get("spec") or {}
    if not isinstance(spec.get("selector"), dict):
        bad.append("spec.selector is required")
    endpoints = spec.get("endpoints")
    if not endpoints:
        return bad + ["spec.endpoints is empty"]
    for i, ep in enumerate(endpoints):
        if not ep.get("port") and not ep.get("targetPort"):
            bad.append(f"endpoints[{i}]: neither port nor targetPort")
        durations = {f: str(ep[f]) for f in ("interval", "scrapeTimeout") if f in ep}
        for f, v in durations.items():
            if not DURATION.match(v):
                bad.append(f"endpoints[{i}].{f}: {v!r} is not a Prometheus duration")
        if len(durations) == 2 and all(DURATION.match(v) for v in durations.values()) and \
                seconds(durations["scrapeTimeout"]) > seconds(durations["interval"]):
            bad.append(f"endpoints[{i}]: scrapeTimeout is longer than interval")
    # Every Service with a port of an endpoint's name is one to scrape: it must be selected.
    names = {ep.get("port") for ep in endpoints}
    for svc in docs:
        if svc.get("kind") != "Service":
            continue
        if names & {p.get("name") for p in svc["spec"].get("ports") or []} and \
                not selects(spec.get("selector") or {}, svc["metadata"].get("labels") or {}):
            bad.append(f"does not select Service {svc['metadata']['name']}")
    return bad


def check_prometheus_rule(d, promcheck):
    bad = []
    groups = (d.get("spec") or {}).get("groups")
    if not groups:
        return ["spec.groups is empty"]
    seen = set()
    for g in groups:
        if not g.get("name") or g["name"] in seen:
            bad.append(f"group name {g.get('name')!r} is empty or repeated")
        seen.add(g.get("name"))
        for r in g.get("rules") or []:
            what = f"group {g.get('name')}, rule {r.get('alert') or r.get('record')}"
            if bool(r.get("alert")) == bool(r.get("record")):
                bad.append(f"{what}: needs exactly one of alert and record")
            if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                bad.append(f"{what}: no expr")
                continue
            unknown = metric_names(r["expr"]) - RULE_METRICS
            if unknown:
                bad.append(f"{what}: expr names metrics outside the contract: {sorted(unknown)}")
            if r.get("alert"):
                if not r.get("for") or not DURATION.match(str(r["for"])):
                    bad.append(f"{what}: 'for' is missing or not a duration")
                if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                    bad.append(f"{what}: no severity label (critical, warning, info)")
                for a in ("summary", "description"):
                    if not (r.get("annotations") or {}).get(a):
                        bad.append(f"{what}: no {a} annotation")
    # Prometheus' own parser over the rule file the Operator writes from this spec.
    return bad + [f"promcheck: {b}" for b in promcheck_rules(promcheck, d["spec"], "spec")]


def check_scaled_object(d, docs, acls):
    bad = []
    spec = d.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    if not ref.get("name"):
        return ["spec.scaleTargetRef.name is required"]
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi):
        bad.append(f"minReplicaCount {lo!r} / maxReplicaCount {hi!r}")
    kind = ref.get("kind", "Deployment")
    target = next((w for w in docs if w.get("kind") == kind and w["metadata"]["name"] == ref["name"]), None)
    if target is None:
        return bad + [f"scale target {kind} {ref['name']} is not in the chart"]
    if "replicas" in target["spec"]:
        bad.append(f"{kind} {ref['name']} sets replicas, which the autoscaler owns")
    triggers = spec.get("triggers")
    if not triggers:
        return bad + ["spec.triggers is empty"]
    auths = {a["metadata"]["name"] for a in docs if a.get("kind") == "TriggerAuthentication"}
    group, prefix = container_env(target, "SEQMON_GROUP_ID"), container_env(target, "SEQMON_TOPIC_PREFIX") or ""
    stage = (group or "")[len(prefix):]
    readable = {a["name"] for a in acls.get(stage, []) if a["type"] == "topic" and "Read" in a["operations"]}
    for i, t in enumerate(triggers):
        meta = t.get("metadata") or {}
        if not t.get("type") or not isinstance(meta, dict):
            bad.append(f"triggers[{i}]: type and metadata are required")
            continue
        if not all(isinstance(v, str) for v in meta.values()):
            bad.append(f"triggers[{i}]: metadata values must be strings")
        name = (t.get("authenticationRef") or {}).get("name")
        if name and name not in auths:
            bad.append(f"triggers[{i}]: TriggerAuthentication {name} is not in the chart")
        if t["type"] == "kafka":
            for f in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                if not meta.get(f):
                    bad.append(f"triggers[{i}]: kafka trigger without {f}")
            if meta.get("consumerGroup") != group:
                bad.append(f"triggers[{i}]: consumerGroup {meta.get('consumerGroup')!r} is not the "
                           f"target's SEQMON_GROUP_ID {group!r}")
            topic = meta.get("topic") or ""
            if not topic.startswith(prefix) or topic[len(prefix):] not in readable:
                bad.append(f"triggers[{i}]: {stage} does not consume topic {topic!r} (files/acls.json)")
    return bad


def check_trigger_auth(d):
    spec = d.get("spec") or {}
    refs = spec.get("secretTargetRef") or []
    env = spec.get("env") or []
    if not (refs or env or set(spec) - {"secretTargetRef", "env"}):
        return ["spec names no credentials"]
    bad = [f"secretTargetRef {r}: needs parameter, name and key" for r in refs
           if not all(r.get(k) for k in ("parameter", "name", "key"))]
    bad += [f"env {e}: needs parameter and name" for e in env if not all(e.get(k) for k in ("parameter", "name"))]
    return bad


def check_kafka_user(d):
    spec = d.get("spec") or {}
    bad = []
    if not (d["metadata"].get("labels") or {}).get("strimzi.io/cluster"):
        bad.append("no strimzi.io/cluster label")
    if (spec.get("authentication") or {}).get("type") not in ("tls", "tls-external", "scram-sha-512"):
        bad.append("spec.authentication.type is not tls, tls-external or scram-sha-512")
    authz = spec.get("authorization") or {}
    if authz and authz.get("type") == "simple":
        for a in authz.get("acls") or []:
            if not (a.get("resource") or {}).get("type") or not (a.get("operations") or a.get("operation")):
                bad.append(f"acl {a}: needs resource.type and operations")
    return bad


def promcheck_rules(promcheck, rule_file, label):
    """`promcheck rules` over a rule file's content: its error lines (the file named label)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(rule_file, f)
    try:
        run = subprocess.run([promcheck(), "rules", f.name], capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"check_chart: cannot run promcheck: {e}")
    finally:
        os.unlink(f.name)
    return [] if run.returncode == 0 else [
        line.replace(f.name, label) for line in (run.stdout + run.stderr).splitlines() if line.strip()]


def check_dashboard(where, text, promcheck):
    try:
        dash = json.loads(text)
    except ValueError as e:
        return [f"{where}: not JSON: {e}"]
    bad, ids, exprs = [], [], []
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus"
               for v in (dash.get("templating") or {}).get("list") or []):
        bad.append(f"{where}: no datasource variable of type prometheus")
    stack = list(dash.get("panels") or [])
    while stack:
        p = stack.pop()
        stack += p.get("panels") or []  # a collapsed row holds its panels
        ids.append(p.get("id"))
        for t in p.get("targets") or []:
            # Grafana's variables: a range for $__interval and the like, a regex for the others.
            exprs.append((f"panel_{p.get('id')}_{t.get('refId')}",
                          re.sub(r"\$\{?\w+\}?", ".*", re.sub(r"\$__\w+", "5m", t.get("expr") or ""))))
            unknown = metric_names(t.get("expr") or "") - CONTRACT
            if unknown:
                bad.append(f"{where}: panel {p.get('id')} {p.get('title')!r} queries metrics outside "
                           f"the contract: {sorted(unknown)}")
    repeated = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if None in ids or repeated:
        bad.append(f"{where}: panel ids missing or repeated: {repeated}")
    # Prometheus' PromQL parser over the queries, as recording rules named after their panels.
    rules = {"groups": [{"name": "check", "rules": [{"record": n, "expr": e} for n, e in exprs]}]}
    return bad + [f"{where}: promcheck: {b}" for b in promcheck_rules(promcheck, rules, "queries")]


CUSTOM = {
    "ServiceMonitor": ("monitoring.coreos.com/v1",),
    "PrometheusRule": ("monitoring.coreos.com/v1",),
    "ScaledObject": ("keda.sh/v1alpha1",),
    "TriggerAuthentication": ("keda.sh/v1alpha1",),
    "KafkaUser": ("kafka.strimzi.io/v1beta2",),
}


def promcheck_finder(given):
    """The promcheck binary: --promcheck, $PROMCHECK, else promcheck.sh path (built once)."""
    found = [given or os.environ.get("PROMCHECK")]

    def find():
        if not found[0]:
            run = subprocess.run([str(ROOT / "tools" / "promcheck" / "promcheck.sh"), "path"],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{run.stderr}check_chart: no promcheck (tools/promcheck/promcheck.sh path failed)")
            found[0] = run.stdout.strip().splitlines()[-1]
        return found[0]
    return find


def main():
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--kube-version", default=KUBE_VERSION)
    args.add_argument("--promcheck", default=None)
    opts = args.parse_args()
    promcheck = promcheck_finder(opts.promcheck)
    acls = json.loads((CHART / "files" / "acls.json").read_text())
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    problems = []
    workloads = []
    budgets = []
    for d in docs:
        kind, name = d.get("kind"), d.get("metadata", {}).get("name")
        where = f"{kind} {name}"
        if kind in CUSTOM:
            if d.get("apiVersion") not in CUSTOM[kind]:
                problems.append(f"{where}: apiVersion {d.get('apiVersion')} is not {CUSTOM[kind][0]}")
            check = {
                "ServiceMonitor": lambda: check_service_monitor(d, docs),
                "PrometheusRule": lambda: check_prometheus_rule(d, promcheck),
                "ScaledObject": lambda: check_scaled_object(d, docs, acls),
                "TriggerAuthentication": lambda: check_trigger_auth(d),
                "KafkaUser": lambda: check_kafka_user(d),
            }[kind]
            problems += [f"{where}: {b}" for b in check()]
        else:
            problems += [f"{where}: {b}" for b in kube_schema(d, opts.kube_version)]
        if kind in WORKLOADS:
            problems += check_pod(where, pod_spec(d))
            if kind in ("Deployment", "StatefulSet"):
                workloads.append(d)
                problems += [f"{where}: {b}" for b in check_probes(d)]
        if kind == "PodDisruptionBudget":
            budgets.append(d["spec"]["selector"]["matchLabels"])
        if kind == "ConfigMap":
            for key, text in (d.get("data") or {}).items():
                if key.endswith(".json"):
                    problems += check_dashboard(f"{where} {key}", text, promcheck)
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        if not any(all(labels.get(k) == v for k, v in b.items()) for b in budgets):
            problems.append(f"{w['kind']} {w['metadata']['name']}: no PodDisruptionBudget")
    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    for f in dashboards:
        problems += check_dashboard(str(f.relative_to(ROOT)), f.read_text(), promcheck)
    for p in problems:
        print(p)
    print(
        f"check_chart: {len(docs)} manifests (Kubernetes {opts.kube_version} schema), "
        f"{len(workloads)} long-running workloads, {len(budgets)} disruption budgets, "
        f"{len(dashboards)} dashboard file(s), {len(problems)} problem(s)",
        file=sys.stderr,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
