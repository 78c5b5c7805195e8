{{- define "seqmon.kafkaEnv" -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: SEQMON_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if .Values.kafka.tlsSecret }}
- name: KAFKA_SSL_CA_LOCATION
  value: /etc/seqmon/tls/ca.pem
{{- if .Values.kafka.mutualTls }}
- name: KAFKA_SSL_CERTIFICATE_LOCATION
  value: /etc/seqmon/tls/client.pem
- name: KAFKA_SSL_KEY_LOCATION
  value: /etc/seqmon/tls/client.key
{{- end }}
{{- end }}
{{- if .Values.kafka.saslMechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.saslMechanism | quote }}
- name: KAFKA_SASL_USERNAME
  valueFrom: { secretKeyRef: { name: {{ .Values.kafka.saslSecret }}, key: username } }
- name: KAFKA_SASL_PASSWORD
  valueFrom: { secretKeyRef: { name: {{ .Values.kafka.saslSecret }}, key: password } }
{{- end }}
{{- if .Values.kafka.options }}
- name: KAFKA_OPTIONS
  value: {{ .Values.kafka.options | quote }}
{{- end }}
{{- end -}}

{{- define "seqmon.tlsVolume" -}}
{{- if .Values.kafka.tlsSecret }}
volumes:
  - name: tls
    secret: { secretName: {{ .Values.kafka.tlsSecret }} }
{{- end }}
{{- end -}}

{{- define "seqmon.tlsMount" -}}
{{- if .Values.kafka.tlsSecret }}
volumeMounts:
  - { name: tls, mountPath: /etc/seqmon/tls, readOnly: true }
{{- end }}
{{- end -}}
