#!/usr/bin/env python3
"""Checks rendered chart manifests (`helm template ... | check_chart.py`) against Kubernetes'
Pod Security Standard "restricted" (the fields its admission controller checks, as documented
at kubernetes.io/docs/concepts/security/pod-security-standards) and the chart's own rules: a
read-only root filesystem, no service-account token, and a PodDisruptionBudget for every
long-running workload. Our own checker of those documented fields, not the admission controller.
Exit 1 with one line per violation."""

import sys

import yaml

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


def main():
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    problems = []
    workloads = []
    budgets = []
    for d in docs:
        kind, name = d.get("kind"), d.get("metadata", {}).get("name")
        if kind in WORKLOADS:
            problems += check_pod(f"{kind} {name}", pod_spec(d))
            if kind in ("Deployment", "StatefulSet"):
                workloads.append(d)
        if kind == "PodDisruptionBudget":
            budgets.append(d["spec"]["selector"]["matchLabels"])
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        if not any(all(labels.get(k) == v for k, v in b.items()) for b in budgets):
            problems.append(f"{w['kind']} {w['metadata']['name']}: no PodDisruptionBudget")
    for p in problems:
        print(p)
    print(
        f"check_chart: {len(docs)} manifests, {len(workloads)} long-running workloads, "
        f"{len(budgets)} disruption budgets, {len(problems)} problem(s)",
        file=sys.stderr,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
