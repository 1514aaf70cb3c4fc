{{- define "agentstream.fullname" -}}
{{- printf "%s-agentstream" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentstream.labels" -}}
app.kubernetes.io/part-of: agentstream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "agentstream.bootstrapServers" -}}
{{- if .Values.kafka.enabled -}}
{{- $name := include "agentstream.fullname" . -}}
{{- range $i, $_ := until (int .Values.kafka.replicas) -}}
{{- if $i }},{{ end }}{{ $name }}-kafka-{{ $i }}.{{ $name }}-kafka:9092
{{- end -}}
{{- else -}}
{{- required "kafka.externalBootstrapServers is required when kafka.enabled is false" .Values.kafka.externalBootstrapServers -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every agentstream worker. */}}
{{- define "agentstream.env" -}}
- name: AGENTSTREAM_BOOTSTRAP_SERVERS
  value: {{ include "agentstream.bootstrapServers" . | quote }}
- name: AGENTSTREAM_CLICKHOUSE_DSN
  valueFrom:
    secretKeyRef:
      name: {{ include "agentstream.fullname" . }}-clickhouse
      key: dsn
- name: AGENTSTREAM_PARTITIONS
  value: {{ .Values.topics.partitions | quote }}
- name: AGENTSTREAM_REPLICATION_FACTOR
  value: {{ .Values.topics.replicationFactor | quote }}
- name: AGENTSTREAM_MIN_INSYNC_REPLICAS
  value: {{ .Values.topics.minInsyncReplicas | quote }}
{{- if .Values.kafka.enabled }}
{{- /* Kafka credentials as env from a Secret, the Kubernetes norm: the value lives only in the
container's environment (its own PID namespace: no other user's process can read it), and the
librdkafka properties need the password itself, not a file. The CA is a mounted file. */}}
- name: AGENTSTREAM_KAFKA
  valueFrom:
    secretKeyRef:
      name: {{ include "agentstream.fullname" . }}-kafka-users
      key: client.json
{{- end }}
- name: AGENTSTREAM_METRICS__HOST
  value: "0.0.0.0"
- name: AGENTSTREAM_METRICS__PORT
  value: {{ .Values.metrics.port | quote }}
{{- range $key, $value := .Values.extraEnv }}
- name: {{ $key }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* The Kafka CA, mounted into every agentstream container (its key never is). */}}
{{- define "agentstream.volumeMounts" -}}
{{- if .Values.kafka.enabled }}
- {name: kafka-ca, mountPath: /etc/agentstream/kafka, readOnly: true}
{{- end }}
{{- end -}}

{{- define "agentstream.volumes" -}}
{{- if .Values.kafka.enabled }}
- name: kafka-ca
  secret:
    secretName: {{ include "agentstream.fullname" . }}-kafka-tls
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end -}}

{{/* Probes of the long-running agentstream processes: their operations endpoint on the metrics
port (GET /healthz: alive, GET /readyz: ready; neither needs a credential). */}}
{{- define "agentstream.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 5
  failureThreshold: 36
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
{{- end -}}
