{{/* Names ---------------------------------------------------------------- */}}
{{- define "clinstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clinstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "clinstream.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "clinstream.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component object name: (dict "root" $ "suffix" "worker") */}}
{{- define "clinstream.componentName" -}}
{{- printf "%s-%s" (include "clinstream.fullname" .root) .suffix | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clinstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels ---------------------------------------------------------------- */}}
{{- define "clinstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clinstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clinstream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "clinstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clinstream
{{- end -}}

{{/* Selector of one component's pods: (dict "root" $ "component" "source" "name" "adt-feed") */}}
{{- define "clinstream.componentSelector" -}}
{{ include "clinstream.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- if .name }}
clinstream.io/name: {{ .name }}
{{- end }}
{{- end -}}

{{/* Secrets ---------------------------------------------------------------- */}}
{{- define "clinstream.kafkaSecretName" -}}
{{- default (include "clinstream.componentName" (dict "root" . "suffix" "kafka")) .Values.kafka.existingSecret -}}
{{- end -}}

{{- define "clinstream.pseudonymSecretName" -}}
{{- default (include "clinstream.componentName" (dict "root" . "suffix" "pseudonym-keys")) .Values.pseudonymKeys.existingSecret -}}
{{- end -}}

{{/* Fail early on combinations KafkaSettings would reject at start-up anyway. */}}
{{- define "clinstream.validate" -}}
{{- $k := .Values.kafka -}}
{{- if not (has $k.securityProtocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) -}}
{{- fail (printf "kafka.securityProtocol (KAFKA_SECURITY_PROTOCOL) must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, got %q" $k.securityProtocol) -}}
{{- end -}}
{{- if and (hasPrefix "SASL" $k.securityProtocol) (not $k.sasl.mechanism) -}}
{{- fail "kafka.sasl.mechanism (KAFKA_SASL_MECHANISM) is required when kafka.securityProtocol uses SASL" -}}
{{- end -}}
{{- if and $k.sasl.mechanism (not (hasPrefix "SASL" $k.securityProtocol)) -}}
{{- fail "kafka.sasl.mechanism is set but kafka.securityProtocol is not SASL_PLAINTEXT or SASL_SSL" -}}
{{- end -}}
{{- if and (has $k.sasl.mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512")) (not $k.existingSecret) (not (and $k.sasl.username $k.sasl.password)) -}}
{{- fail (printf "kafka.sasl.username and kafka.sasl.password (or kafka.existingSecret) are required for %s" $k.sasl.mechanism) -}}
{{- end -}}
{{- if and (eq $k.sasl.mechanism "OAUTHBEARER") (not $k.sasl.oauthbearer.tokenEndpointUrl) -}}
{{- fail "kafka.sasl.oauthbearer.tokenEndpointUrl is required for OAUTHBEARER" -}}
{{- end -}}
{{- if and $k.tls.mutual (not $k.tls.secretName) -}}
{{- fail "kafka.tls.mutual needs kafka.tls.secretName (a Secret with ca.crt, tls.crt, tls.key)" -}}
{{- end -}}
{{- if not .Values.pseudonymKeys.existingSecret -}}
{{- range $d := .Values.topology.destinations -}}
{{- range $t := ($d.transforms | default list) -}}
{{- if and (eq $t.kind "pseudonym") $t.key_env (not (hasKey $.Values.pseudonymKeys.values $t.key_env)) -}}
{{- fail (printf "destination %s: pseudonym key %s missing from pseudonymKeys.values (or set pseudonymKeys.existingSecret)" $d.name $t.key_env) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $s := .Values.topology.sources -}}
{{- if has (dig "host" "" ($s.options | default dict)) (list "127.0.0.1" "localhost" "::1") -}}
{{- fail (printf "source %s listens on loopback (options.host); use 0.0.0.0 in a pod" $s.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod pieces ------------------------------------------------------------ */}}

{{/* Env every clinstream container gets: (dict "root" $ "clientId" "clinstream-worker") */}}
{{- define "clinstream.env" -}}
{{- $k := .root.Values.kafka -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ $k.bootstrapServers | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol | quote }}
- name: KAFKA_SESSION_TIMEOUT_MS
  value: {{ $k.sessionTimeoutMs | int | quote }}
- name: KAFKA_COMPRESSION_TYPE
  value: {{ $k.compressionType | default "zstd" | quote }}
- name: KAFKA_CLIENT_ID
  value: {{ .clientId | quote }}
{{- if $k.sasl.mechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism | quote }}
{{- end }}
{{- if eq $k.sasl.mechanism "OAUTHBEARER" }}
- name: KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL
  value: {{ $k.sasl.oauthbearer.tokenEndpointUrl | quote }}
- name: KAFKA_SASL_OAUTHBEARER_CLIENT_ID
  value: {{ $k.sasl.oauthbearer.clientId | quote }}
{{- end }}
{{- if $k.tls.secretName }}
- name: KAFKA_SSL_CA_LOCATION
  value: /etc/clinstream/kafka-tls/ca.crt
{{- if $k.tls.mutual }}
- name: KAFKA_SSL_CERTIFICATE_LOCATION
  value: /etc/clinstream/kafka-tls/tls.crt
- name: KAFKA_SSL_KEY_LOCATION
  value: /etc/clinstream/kafka-tls/tls.key
{{- end }}
{{- end }}
{{- if hasSuffix "SSL" $k.securityProtocol }}
- name: KAFKA_SSL_CHECK_HOSTNAME
  value: {{ $k.tls.checkHostname | quote }}
{{- end }}
- name: CLINSTREAM_OPS_HOST
  value: "0.0.0.0"
- name: CLINSTREAM_OPS_PORT
  value: {{ .root.Values.ops.port | int | quote }}
- name: CLINSTREAM_TOPOLOGY
  value: /etc/clinstream/topology.yaml
# Python writes caches under HOME; the root filesystem is read-only.
- name: HOME
  value: /tmp
{{- with .root.Values.gc }}
- name: CLINSTREAM_GC_GEN0
  value: {{ .gen0 | int64 | quote }}
- name: CLINSTREAM_GC_GEN1
  value: {{ .gen1 | int64 | quote }}
- name: CLINSTREAM_GC_GEN2
  value: {{ .gen2 | int64 | quote }}
- name: CLINSTREAM_GC_FREEZE
  value: {{ .freeze | quote }}
{{- end }}
{{- with .root.Values.malloc }}
- name: CLINSTREAM_MALLOC_ARENA_MAX
  value: {{ .arenaMax | int64 | quote }}
{{- end }}
{{- with .tuningEnv }}
{{ . }}
{{- end }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The worker's batch and state settings, before extraEnv so an extraEnv entry still wins. */}}
{{- define "clinstream.workerTuningEnv" -}}
{{- $b := .Values.worker.batch -}}
{{- $s := .Values.worker.state -}}
- name: CLINSTREAM_BATCH_SIZE
  value: {{ $b.size | int64 | quote }}
- name: CLINSTREAM_BATCH_WITHIN_MS
  value: {{ $b.withinMs | int64 | quote }}
- name: CLINSTREAM_BATCH_IDLE_MS
  value: {{ $b.idleMs | int64 | quote }}
- name: CLINSTREAM_BATCH_INBOX_RECORDS
  value: {{ $b.inboxRecords | int64 | quote }}
- name: CLINSTREAM_STATE_WRITE_BUFFER_MB
  value: {{ $s.writeBufferMb | int64 | quote }}
- name: CLINSTREAM_STATE_MAX_WRITE_BUFFERS
  value: {{ $s.maxWriteBuffers | int64 | quote }}
- name: CLINSTREAM_STATE_BLOCK_CACHE_MB
  value: {{ $s.blockCacheMb | int64 | quote }}
- name: CLINSTREAM_STATE_INDEX_CACHE_ENTRIES
  value: {{ $s.indexCacheEntries | int64 | quote }}
{{- end -}}

{{/* envFrom: shared Kafka secret, then the component's own (later keys win). */}}
{{- define "clinstream.envFrom" -}}
- secretRef:
    name: {{ include "clinstream.kafkaSecretName" .root }}
{{- if .kafkaSecret }}
- secretRef:
    name: {{ .kafkaSecret }}
{{- end }}
{{- if .pseudonymKeys }}
- secretRef:
    name: {{ include "clinstream.pseudonymSecretName" .root }}
{{- end }}
{{- with .root.Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- with .extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "clinstream.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  {{- toYaml .Values.probes.readiness | nindent 2 }}
{{- end -}}

{{- define "clinstream.commonMounts" -}}
- name: topology
  mountPath: /etc/clinstream/topology.yaml
  subPath: topology.yaml
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/clinstream
{{- if .Values.kafka.tls.secretName }}
- name: kafka-tls
  mountPath: /etc/clinstream/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes besides `data` (which each workload defines). */}}
{{- define "clinstream.commonVolumes" -}}
- name: topology
  configMap:
    name: {{ include "clinstream.componentName" (dict "root" . "suffix" "topology") }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if .Values.kafka.tls.secretName }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every workload. */}}
{{- define "clinstream.podSpecCommon" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod annotations that roll pods when their configuration changes. */}}
{{- define "clinstream.checksums" -}}
checksum/topology: {{ toYaml .Values.topology | sha256sum }}
checksum/kafka: {{ toYaml .Values.kafka | sha256sum }}
{{- end -}}

{{/* stringData of the chart-managed Kafka Secret ({} when there is nothing secret). */}}
{{- define "clinstream.kafkaSecretData" -}}
{{- $s := .Values.kafka.sasl -}}
{{- $data := dict -}}
{{- if $s.username }}{{ $_ := set $data "KAFKA_SASL_USERNAME" $s.username }}{{ end -}}
{{- if $s.password }}{{ $_ := set $data "KAFKA_SASL_PASSWORD" $s.password }}{{ end -}}
{{- if $s.oauthbearer.clientSecret }}{{ $_ := set $data "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET" $s.oauthbearer.clientSecret }}{{ end -}}
{{- if .Values.kafka.tls.keyPassword }}{{ $_ := set $data "KAFKA_SSL_KEY_PASSWORD" .Values.kafka.tls.keyPassword }}{{ end -}}
{{- if $data }}{{ toYaml $data }}{{ else }}{}{{ end -}}
{{- end -}}

{{- define "clinstream.hasPseudonymKeys" -}}
{{- if or .Values.pseudonymKeys.existingSecret .Values.pseudonymKeys.values }}true{{ end -}}
{{- end -}}
