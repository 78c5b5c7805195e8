{{- /* Connection and credentials of one component: (dict "root" $ "component" NAME "secret" SECRET).
       Each component has a principal of its own, userPrefix + NAME, whose Secret holds its
       password (scram) or certificate (tls) under Strimzi's key names. */ -}}
{{- define "seqmon.kafkaEnv" -}}
{{- $v := .root.Values -}}
{{- $secret := default (printf "%s%s" $v.kafka.userPrefix .component) .secret -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ $v.kafka.bootstrapServers | quote }}
- name: SEQMON_TOPIC_PREFIX
  value: {{ $v.kafka.topicPrefix | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ $v.kafka.securityProtocol | quote }}
{{- if $v.kafka.caSecret }}
- name: KAFKA_SSL_CA_LOCATION
  value: /etc/seqmon/kafka-ca/ca.crt
{{- end }}
{{- if eq $v.kafka.auth "tls" }}
- name: KAFKA_SSL_CERTIFICATE_LOCATION
  value: /etc/seqmon/kafka-user/user.crt
- name: KAFKA_SSL_KEY_LOCATION
  value: /etc/seqmon/kafka-user/user.key
{{- else if eq $v.kafka.auth "scram" }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $v.kafka.saslMechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ printf "%s%s" $v.kafka.userPrefix .component | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom: { secretKeyRef: { name: {{ $secret }}, key: password } }
{{- end }}
{{- if $v.kafka.options }}
- name: KAFKA_OPTIONS
  value: {{ $v.kafka.options | quote }}
{{- end }}
{{- end -}}

{{- /* Volume mounts of one component's Kafka credentials (same dict). */ -}}
{{- define "seqmon.kafkaMounts" -}}
{{- $v := .root.Values -}}
{{- if $v.kafka.caSecret }}
- { name: kafka-ca, mountPath: /etc/seqmon/kafka-ca, readOnly: true }
{{- end }}
{{- if eq $v.kafka.auth "tls" }}
- { name: kafka-user, mountPath: /etc/seqmon/kafka-user, readOnly: true }
{{- end }}
{{- end -}}

{{- define "seqmon.kafkaVolumes" -}}
{{- $v := .root.Values -}}
{{- $secret := default (printf "%s%s" $v.kafka.userPrefix .component) .secret -}}
{{- if $v.kafka.caSecret }}
- name: kafka-ca
  secret: { secretName: {{ $v.kafka.caSecret }}, items: [ { key: ca.crt, path: ca.crt } ] }
{{- end }}
{{- if eq $v.kafka.auth "tls" }}
- name: kafka-user
  secret: { secretName: {{ $secret }}, defaultMode: 0400, items: [ { key: user.crt, path: user.crt }, { key: user.key, path: user.key } ] }
{{- end }}
{{- end -}}

{{- /* Pod Security "restricted" for every pod: non-root, the runtime's seccomp profile. */ -}}
{{- define "seqmon.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile: { type: RuntimeDefault }
{{- end -}}

{{- /* ... and for every container: no privilege escalation, no capabilities, a read-only root
       filesystem (the services write nothing to disk; logs go to stdout). */ -}}
{{- define "seqmon.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities: { drop: [ALL] }
{{- end -}}

{{- /* Spread a component's pods over nodes (best effort) and let at most one be evicted at a
       time: (dict "root" $ "component" NAME). */ -}}
{{- define "seqmon.spread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels: { app.kubernetes.io/component: {{ .component }}, app.kubernetes.io/instance: {{ .root.Release.Name }} }
{{- end -}}

{{- define "seqmon.pdb" -}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .root.Release.Name }}-{{ .component }}
  labels: { app.kubernetes.io/component: {{ .component }}, app.kubernetes.io/instance: {{ .root.Release.Name }} }
spec:
  maxUnavailable: 1
  selector:
    matchLabels: { app.kubernetes.io/component: {{ .component }}, app.kubernetes.io/instance: {{ .root.Release.Name }} }
{{- end -}}

{{- /* Pod annotations: podAnnotations, and while prometheus.io/scrape is among them the port and
       path of /metrics, the port always that of metricsPort. */ -}}
{{- define "seqmon.podAnnotations" -}}
{{- $a := deepCopy .Values.podAnnotations -}}
{{- if hasKey $a "prometheus.io/scrape" }}
{{- $_ := set $a "prometheus.io/port" (toString .Values.metricsPort) }}
{{- $_ := set $a "prometheus.io/path" "/metrics" }}
{{- end }}
{{- toYaml $a }}
{{- end -}}

{{- /* Health checks of a component's container, all on its metrics port (values probes):
       (dict "root" $ "ready" PATH), PATH /readyz for the stages, /healthz for the others. */ -}}
{{- define "seqmon.probes" -}}
{{- $p := .root.Values.probes -}}
startupProbe:
  httpGet: { path: /healthz, port: metrics }
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
livenessProbe:
  httpGet: { path: /healthz, port: metrics }
  periodSeconds: {{ $p.liveness.periodSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
readinessProbe:
  httpGet: { path: {{ .ready }}, port: metrics }
  periodSeconds: {{ $p.readiness.periodSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
{{- end -}}

{{- /* The topics a stage consumes, without kafka.topicPrefix, as JSON: its input first, then its
       side inputs (each processor's input_role and side_input_roles, names from the catalogue
       in crates/model/src/topics.rs; check_chart.py checks them against files/acls.json). */ -}}
{{- define "seqmon.stageInputs" -}}
{{- $inputs := dict
      "validator" (list "telemetry.raw")
      "privacy-enforcer" (list "telemetry.validated")
      "feature-extractor" (list "telemetry.sanitized")
      "anomaly-detector" (list "features")
      "cohort-analyzer" (list "cohort.signals")
      "notifier" (list "anomalies" "alerts.commands" "features") -}}
{{- toJson (required (printf "no input topics known for stage %s (templates/_helpers.tpl)" .) (get $inputs .)) -}}
{{- end -}}
