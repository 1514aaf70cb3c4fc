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
{{- range $key, $value := .Values.extraEnv }}
- name: {{ $key }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}
