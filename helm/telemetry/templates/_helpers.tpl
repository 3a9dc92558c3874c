{{/*
Expand the name of the chart.
*/}}
{{- define "telemetry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "telemetry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "telemetry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "telemetry.labels" -}}
helm.sh/chart: {{ include "telemetry.chart" . }}
{{ include "telemetry.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "telemetry.name" . }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "telemetry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "telemetry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "telemetry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "telemetry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of one component's resources: "<fullname>-<component>".
Usage: include "telemetry.componentName" (dict "root" $ "component" "api")
*/}}
{{- define "telemetry.componentName" -}}
{{- printf "%s-%s" (include "telemetry.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of one component: the common labels plus app.kubernetes.io/component.
*/}}
{{- define "telemetry.componentLabels" -}}
{{ include "telemetry.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component.
*/}}
{{- define "telemetry.componentSelectorLabels" -}}
{{ include "telemetry.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Image of a service: "<registry>/<repository>-<component>:<tag>", each part overridable per service.
*/}}
{{- define "telemetry.image" -}}
{{- $img := .root.Values.image }}
{{- $own := (index .root.Values .component).image | default dict }}
{{- $repo := $own.repository }}
{{- if not $repo }}
{{- $repo = printf "%s-%s" $img.repository .component }}
{{- if $img.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" $img.registry) $repo }}
{{- end }}
{{- end }}
{{- $tag := $own.tag | default $img.tag | default .root.Chart.AppVersion }}
{{- printf "%s:%s" $repo (toString $tag) }}
{{- end }}

{{/*
A service's effective settings: `defaults` with the service's `overrides` merged over them (YAML;
read back with fromYaml).
*/}}
{{- define "telemetry.config" -}}
{{- $v := index .root.Values .component }}
{{- mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy ($v.overrides | default dict)) | toYaml }}
{{- end }}

{{/*
Secret and key holding the in-chart PostgreSQL's password (postgresql.auth.existingSecret or the
chart-made one).
*/}}
{{- define "telemetry.postgresql.secretName" -}}
{{- .Values.postgresql.auth.existingSecret | default (include "telemetry.componentName" (dict "root" . "component" "postgresql")) }}
{{- end }}

{{- define "telemetry.postgresql.passwordKey" -}}
{{- required "postgresql.auth.passwordKey is required" .Values.postgresql.auth.passwordKey }}
{{- end }}

{{/*
DSN of the in-chart PostgreSQL, without the password: libpq takes that from PGPASSWORD, so the
password never has to be URL-encoded into a DSN.
*/}}
{{- define "telemetry.postgresql.dsn" -}}
{{- $auth := .Values.postgresql.auth }}
{{- printf "postgresql://%s@%s:%v/%s" (urlquery $auth.username) (include "telemetry.componentName" (dict "root" . "component" "postgresql")) .Values.postgresql.service.port (urlquery $auth.database) }}
{{- end }}

{{/*
Environment entries that give a container its database: with the in-chart PostgreSQL, the DSN in
.name and the password in PGPASSWORD; with an external database, the DSN from its Secret.
Usage: include "telemetry.databaseEnv" (dict "root" $ "name" "API_DATABASE_URL")
*/}}
{{- define "telemetry.databaseEnv" -}}
{{- $root := .root }}
{{- if $root.Values.postgresql.enabled }}
- name: {{ .name }}
  value: {{ include "telemetry.postgresql.dsn" $root | quote }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "telemetry.postgresql.secretName" $root }}
      key: {{ include "telemetry.postgresql.passwordKey" $root }}
{{- else }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ required "externalDatabase.existingSecret is required when postgresql.enabled=false" $root.Values.externalDatabase.existingSecret }}
      key: {{ required "externalDatabase.key is required" $root.Values.externalDatabase.key }}
{{- end }}
{{- end }}

{{/*
Secret holding the broker token.
*/}}
{{- define "telemetry.brokerTokenSecretName" -}}
{{- .Values.brokerAuth.existingSecret | default (include "telemetry.componentName" (dict "root" . "component" "broker-token")) }}
{{- end }}

{{/*
Secret holding the API token.
*/}}
{{- define "telemetry.apiTokenSecretName" -}}
{{- .Values.apiAuth.existingSecret | default (include "telemetry.componentName" (dict "root" . "component" "api-token")) }}
{{- end }}

{{/*
In-cluster URL of the broker's client Service.
*/}}
{{- define "telemetry.brokerUrl" -}}
{{- printf "http://%s:%v" (include "telemetry.componentName" (dict "root" . "component" "broker")) .Values.broker.service.port }}
{{- end }}

{{/*
Image of the in-chart PostgreSQL.
*/}}
{{- define "telemetry.postgresql.image" -}}
{{- $i := .Values.postgresql.image }}
{{- if $i.registry }}{{ printf "%s/%s:%v" $i.registry $i.repository $i.tag }}{{ else }}{{ printf "%s:%v" $i.repository $i.tag }}{{ end }}
{{- end }}

{{/*
Read a key of an existing Secret in the release namespace (for values that must survive upgrades,
such as generated passwords); empty when absent or when rendering offline (helm template/lint).
*/}}
{{- define "telemetry.existingSecretValue" -}}
{{- $secret := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $secret $secret.data (hasKey $secret.data .key) }}
{{- index $secret.data .key | b64dec }}
{{- end }}
{{- end }}

{{/*
Bytes in a size such as "5Gi", "512Mi", "1G" or "1048576".
Usage: include "telemetry.bytes" (dict "name" "broker.storage.segmentBytes" "value" $v)
*/}}
{{- define "telemetry.bytes" -}}
{{- $s := .value | toString | trim }}
{{- if kindIs "float64" .value }}{{ $s = .value | int64 | toString }}{{ end }}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 }}
{{- $digits := regexFind "^[0-9]+" $s }}
{{- $unit := trimPrefix $digits $s }}
{{- if or (not $digits) (not (hasKey $units $unit)) }}
{{- fail (printf "%s: %q is not a size (e.g. 5Gi, 512Mi, 1G or bytes)" .name $s) }}
{{- end }}
{{- mul (int64 $digits) (index $units $unit) }}
{{- end }}

{{/*
The broker's disk budget (values broker.storage), checked against broker.persistence.size: the
BROKER_* variables it sets, as YAML. Fails when the budget cannot fit the volume.
*/}}
{{- define "telemetry.brokerStorageEnv" -}}
{{- $b := .Values.broker }}
{{- $st := $b.storage }}
{{- $size := include "telemetry.bytes" (dict "name" "broker.persistence.size" "value" $b.persistence.size) | int64 }}
{{- $backlog := include "telemetry.bytes" (dict "name" "broker.storage.maxBacklogBytes" "value" $st.maxBacklogBytes) | int64 }}
{{- $dead := include "telemetry.bytes" (dict "name" "broker.storage.maxDeadLetterBytes" "value" $st.maxDeadLetterBytes) | int64 }}
{{- $segment := include "telemetry.bytes" (dict "name" "broker.storage.segmentBytes" "value" $st.segmentBytes) | int64 }}
{{- $wal := include "telemetry.bytes" (dict "name" "broker.storage.walSegmentBytes" "value" $st.walSegmentBytes) | int64 }}
{{- $watermark := float64 $st.diskHighWatermark }}
{{- if or (le $watermark 0.0) (gt $watermark 1.0) }}
{{- fail (printf "broker.storage.diskHighWatermark must be a fraction in (0, 1] (got %v)" $st.diskHighWatermark) }}
{{- end }}
{{- if lt (float64 $st.slackPercent) (mulf (subf 1.0 $watermark) 100.0) }}
{{- fail (printf "broker.storage.slackPercent (%v) must be at least 100 x (1 - diskHighWatermark) = %v, or the budget reaches the watermark and publishes answer 429 DISK_FULL" $st.slackPercent (mulf (subf 1.0 $watermark) 100.0)) }}
{{- end }}
{{- $partitions := index $b.env "BROKER_PARTITIONS" | default 16 | int64 }}
{{- $need := int64 0 }}
{{- $topics := list }}
{{- range $spec := splitList "," (index $b.env "BROKER_TOPICS" | default "" | toString) }}
{{- $spec = trim $spec }}
{{- if $spec }}
{{- $p := $partitions }}
{{- if contains ":" $spec }}{{ $p = splitList ":" $spec | last | int64 }}{{ end }}
{{- /* the topic and its dead-letter topic (one partition): backlog, pending letters, logs */}}
{{- $need = add $need $backlog $dead (mul 4 $wal) (mul (add $p 1) $segment) }}
{{- $topics = append $topics (printf "%s (%d partitions)" (splitList ":" $spec | first) $p) }}
{{- end }}
{{- end }}
{{- $slack := div (mul $size (int64 $st.slackPercent)) 100 }}
{{- $retention := int64 0 }}
{{- if eq (toString $st.retentionBytes) "auto" }}
{{- $retention = sub (sub $size $slack) $need }}
{{- if le $retention 0 }}
{{- fail (printf "broker.persistence.size (%v = %d bytes) is too small for the broker's disk budget: topics %s need %d bytes (per topic maxBacklogBytes + maxDeadLetterBytes + 4 x walSegmentBytes + (partitions + 1) x segmentBytes), slack %d; nothing is left for retention. Raise the size or lower broker.storage." $b.persistence.size $size (join ", " $topics) $need $slack) }}
{{- end }}
{{- else }}
{{- $retention = include "telemetry.bytes" (dict "name" "broker.storage.retentionBytes" "value" $st.retentionBytes) | int64 }}
{{- if gt (add $need $retention $slack) $size }}
{{- fail (printf "broker.storage does not fit broker.persistence.size (%v = %d bytes): topics %s need %d bytes (per topic maxBacklogBytes + maxDeadLetterBytes + 4 x walSegmentBytes + (partitions + 1) x segmentBytes) + retentionBytes %d + slack %d = %d bytes" $b.persistence.size $size (join ", " $topics) $need $retention $slack (add $need $retention $slack)) }}
{{- end }}
{{- end }}
BROKER_MAX_BACKLOG_BYTES: {{ $backlog | quote }}
BROKER_MAX_DEAD_LETTER_BYTES: {{ $dead | quote }}
BROKER_SEGMENT_BYTES: {{ $segment | quote }}
BROKER_WAL_SEGMENT_BYTES: {{ $wal | quote }}
BROKER_RETENTION_BYTES: {{ $retention | quote }}
BROKER_DISK_HIGH_WATERMARK: {{ $st.diskHighWatermark | toString | quote }}
{{- end }}

{{/*
Environment of a service container. Chart-managed variables first (host, port, logging, shutdown
timeouts, peers), then `<service>.env` over them; DSN and token come from Secrets.
Usage: include "telemetry.env" (dict "root" $ "component" "collector" "prefix" "COLLECTOR" "cfg" $cfg
       "database" true "broker" true)
*/}}
{{- define "telemetry.env" -}}
{{- $root := .root }}
{{- $p := .prefix }}
{{- $v := index $root.Values .component }}
{{- $cfg := .cfg }}
{{- $env := dict }}
{{- $_ := set $env (printf "%s_HOST" $p) "0.0.0.0" }}
{{- $_ = set $env (printf "%s_PORT" $p) (toString $v.service.port) }}
{{- $_ = set $env (printf "%s_LOG_LEVEL" $p) (toString $cfg.logLevel) }}
{{- $_ = set $env (printf "%s_LOG_FORMAT" $p) (toString $cfg.logFormat) }}
{{- $_ = set $env (printf "%s_GRACEFUL_TIMEOUT" $p) (toString $cfg.gracefulTimeout) }}
{{- $_ = set $env (printf "%s_SHUTDOWN_TIMEOUT" $p) (toString $cfg.shutdownTimeout) }}
{{- if .broker }}
{{- $_ = set $env (printf "%s_BROKER_URL" $p) (include "telemetry.brokerUrl" $root) }}
{{- end }}
{{- if eq .component "broker" }}
{{- $_ = set $env "BROKER_DATA_DIR" $v.dataDir }}
{{- range $name, $value := include "telemetry.brokerStorageEnv" $root | fromYaml }}
{{- $_ = set $env $name (toString $value) }}
{{- end }}
{{- end }}
{{- if and (eq .component "streamer") (eq (toString $v.source) "scrape") }}
{{- $s := $v.scrape }}
{{- $_ = set $env "STREAMER_SOURCE" "scrape" }}
{{- $_ = set $env "STREAMER_SCRAPE_INTERVAL" (toString $s.interval) }}
{{- $_ = set $env "STREAMER_SCRAPE_TIMEOUT" (toString $s.timeout) }}
{{- $dns := $s.dns }}
{{- if and $s.headlessService.enabled (not $dns) }}
{{- $dns = include "telemetry.exportersDns" $root }}
{{- end }}
{{- if not (or $dns $s.targets (get $v.env "STREAMER_SCRAPE_DNS") (get $v.env "STREAMER_SCRAPE_TARGETS")) }}
{{- fail "streamer.source is scrape: set streamer.scrape.dns, streamer.scrape.targets or enable streamer.scrape.headlessService" }}
{{- end }}
{{- with $dns }}
{{- $_ = set $env "STREAMER_SCRAPE_DNS" . }}
{{- end }}
{{- with $s.targets }}
{{- $_ = set $env "STREAMER_SCRAPE_TARGETS" . }}
{{- end }}
{{- with $s.fields }}
{{- $_ = set $env "STREAMER_SCRAPE_FIELDS" . }}
{{- end }}
{{- end }}
{{- range $name, $value := $v.env }}
{{- $_ = set $env $name (toString $value) }}
{{- end }}
{{- range $name := keys $env | sortAlpha }}
- name: {{ $name }}
  value: {{ index $env $name | quote }}
{{- end }}
{{- if .database }}
{{- include "telemetry.databaseEnv" (dict "root" $root "name" (printf "%s_DATABASE_URL" $p)) }}
{{- end }}
{{- if and (eq .component "api") $root.Values.apiAuth.enabled }}
- name: API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "telemetry.apiTokenSecretName" $root }}
      key: {{ $root.Values.apiAuth.key }}
{{- end }}
{{- if $root.Values.brokerAuth.enabled }}
{{- if or .broker (eq .component "broker") }}
- name: {{ ternary "BROKER_TOKEN" (printf "%s_BROKER_TOKEN" $p) (eq .component "broker") }}
  valueFrom:
    secretKeyRef:
      name: {{ include "telemetry.brokerTokenSecretName" $root }}
      key: {{ $root.Values.brokerAuth.key }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The headless Service over the exporters' pods (streamer.scrape.headlessService) and the DNS name
the streamers resolve to reach every one of them: "<name>.<namespace>.svc:<port>".
*/}}
{{- define "telemetry.exportersServiceName" -}}
{{- printf "%s-dcgm-exporters" (include "telemetry.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "telemetry.exportersDns" -}}
{{- $h := .Values.streamer.scrape.headlessService }}
{{- printf "%s.%s.svc:%v" (include "telemetry.exportersServiceName" .) ($h.namespace | default .Release.Namespace) $h.port }}
{{- end }}

{{/*
Pod template of a service (shared by the broker StatefulSet and the Deployments).
Usage: include "telemetry.podTemplate" (dict "root" $ "component" "api" "prefix" "API"
       "database" true "broker" false)
*/}}
{{- define "telemetry.podTemplate" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
{{- $cfg := include "telemetry.config" . | fromYaml }}
{{- $grace := float64 $cfg.terminationGracePeriodSeconds }}
{{- $budget := addf $cfg.preStopSleepSeconds $cfg.gracefulTimeout $cfg.shutdownTimeout }}
{{- if not (lt $budget $grace) }}
{{- fail (printf "%s: terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + gracefulTimeout + shutdownTimeout (%v)" .component $cfg.terminationGracePeriodSeconds $budget) }}
{{- end }}
{{- if not (lt (float64 $cfg.shutdownTimeout) (float64 $cfg.gracefulTimeout)) }}
{{- fail (printf "%s: shutdownTimeout (%v) must be below gracefulTimeout (%v)" .component $cfg.shutdownTimeout $cfg.gracefulTimeout) }}
{{- end }}
metadata:
  labels:
    {{- include "telemetry.componentLabels" . | nindent 4 }}
    {{- with $cfg.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or $root.Values.metrics.podAnnotations $cfg.podAnnotations }}
  annotations:
    {{- if $root.Values.metrics.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $v.service.port | quote }}
    prometheus.io/path: "/metrics"
    {{- end }}
    {{- with $cfg.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  serviceAccountName: {{ include "telemetry.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $root.Values.serviceAccount.automount }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $cfg.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $cfg.podSecurityContext | nindent 4 }}
  {{- if and .database $cfg.waitForDatabase }}
  initContainers:
    # The streamer and collector migrate at start and exit if PostgreSQL is not there yet; waiting
    # here keeps a fresh install out of CrashLoopBackOff while the database starts.
    - name: wait-for-database
      image: {{ include "telemetry.image" . | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command:
        - python
        - -c
        - |
          import os, sys, time
          import psycopg2
          deadline = time.monotonic() + {{ $cfg.waitForDatabaseSeconds }}
          while True:
              try:
                  psycopg2.connect(os.environ["DATABASE_URL"], connect_timeout=3).close()
                  break
              except psycopg2.OperationalError as e:
                  if time.monotonic() > deadline:
                      sys.exit(f"database unreachable: {e}")
                  print("waiting for the database:", str(e).strip(), flush=True)
                  time.sleep(2)
      env:
        {{- include "telemetry.databaseEnv" (dict "root" $root "name" "DATABASE_URL") | trim | nindent 8 }}
      securityContext:
        {{- toYaml $cfg.securityContext | nindent 8 }}
      resources:
        requests:
          cpu: 10m
          memory: 32Mi
        limits:
          memory: 64Mi
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "telemetry.image" . | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      securityContext:
        {{- toYaml $cfg.securityContext | nindent 8 }}
      ports:
        - name: http
          containerPort: {{ $v.service.port }}
          protocol: TCP
      env:
        {{- include "telemetry.env" (dict "root" $root "component" .component "prefix" .prefix "database" .database "broker" .broker "cfg" $cfg) | trim | nindent 8 }}
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml $cfg.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml $cfg.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml $cfg.probes.readiness | nindent 8 }}
      {{- if gt (int $cfg.preStopSleepSeconds) 0 }}
      lifecycle:
        preStop:
          # Let Services and kube-proxy drop this pod before SIGTERM starts the graceful drain.
          exec:
            command: ["sleep", "{{ $cfg.preStopSleepSeconds }}"]
      {{- end }}
      resources:
        {{- toYaml ($v.resources | default $cfg.resources) | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if eq .component "broker" }}
        - name: data
          mountPath: {{ $v.dataDir }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $cfg.tmpSizeLimit }}
    {{- if and (eq .component "broker") (not $v.persistence.enabled) }}
    - name: data
      emptyDir: {}
    {{- end }}
  {{- with $cfg.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $cfg.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
A Deployment of a stateless service (streamer, collector, api), with its Service.
*/}}
{{- define "telemetry.deployment" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
{{- if $v.enabled }}
{{- if and (ne .component "api") (gt (int $v.replicaCount) 10) }}
{{- fail (printf "%s.replicaCount is at most 10 (got %v)" .component $v.replicaCount) }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "telemetry.componentName" . }}
  labels:
    {{- include "telemetry.componentLabels" . | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "telemetry.componentSelectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    {{- include "telemetry.podTemplate" . | trim | nindent 4 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "telemetry.componentName" . }}
  labels:
    {{- include "telemetry.componentLabels" . | nindent 4 }}
spec:
  type: {{ $v.service.type | default "ClusterIP" }}
  ports:
    - name: http
      port: {{ $v.service.port }}
      targetPort: http
      protocol: TCP
  selector:
    {{- include "telemetry.componentSelectorLabels" . | nindent 4 }}
{{- end }}
{{- end }}

{{/*
HorizontalPodAutoscaler of a Deployment, when <component>.autoscaling.enabled.
*/}}
{{- define "telemetry.hpa" -}}
{{- $v := index .root.Values .component }}
{{- if and $v.enabled $v.autoscaling.enabled }}
{{- if and (ne .component "api") (gt (int $v.autoscaling.maxReplicas) 10) }}
{{- fail (printf "%s.autoscaling.maxReplicas is at most 10 (got %v)" .component $v.autoscaling.maxReplicas) }}
{{- end }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "telemetry.componentName" . }}
  labels:
    {{- include "telemetry.componentLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "telemetry.componentName" . }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end }}

{{/*
PodDisruptionBudget of a component, when <component>.podDisruptionBudget.enabled.
*/}}
{{- define "telemetry.pdb" -}}
{{- $v := index .root.Values .component }}
{{- if and $v.enabled $v.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "telemetry.componentName" . }}
  labels:
    {{- include "telemetry.componentLabels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $v.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "telemetry.componentSelectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/*
The connection budget: the most PostgreSQL connections the release may open at once, which must
fit in connectionBudget.maxConnections minus connectionBudget.reserved, or rendering fails.
Per pod: the API its pool (API_POOL_MAX_SIZE, default 10) plus one for /readyz; a collector one
per worker (COLLECTOR_WORKERS, default 4) plus one spare in its pool plus one for /readyz; a
streamer its pool of 2 (and one for its leases with the scrape source). Pods: the HPA's maxReplicas when autoscaling, else replicaCount, plus the
rolling update's surge (25 %, rounded up).
*/}}
{{- define "telemetry.connections" -}}
{{- $root := .root }}
{{- $v := index $root.Values .component }}
{{- if $v.enabled }}
{{- $replicas := int (ternary $v.autoscaling.maxReplicas $v.replicaCount $v.autoscaling.enabled) }}
{{- $pods := add $replicas (div (add $replicas 3) 4) }}
{{- $perPod := 0 }}
{{- if eq .component "api" }}
{{- $perPod = add (int (get $v.env "API_POOL_MAX_SIZE" | default 10)) 1 }}
{{- else if eq .component "collector" }}
{{- $perPod = add (int (get $v.env "COLLECTOR_WORKERS" | default 4)) 2 }}
{{- else if eq .component "streamer" }}
{{- $perPod = ternary 3 2 (eq (toString $v.source) "scrape") }}
{{- end }}
{{- mul $pods $perPod }}
{{- else }}0{{- end }}
{{- end }}

{{- define "telemetry.checkConnectionBudget" -}}
{{- $b := .Values.connectionBudget }}
{{- $parts := list }}
{{- $total := 0 }}
{{- range $component := list "api" "collector" "streamer" }}
{{- $n := int (include "telemetry.connections" (dict "root" $ "component" $component)) }}
{{- $total = add $total $n }}
{{- $parts = append $parts (printf "%s %d" $component $n) }}
{{- end }}
{{- if .Values.maintenance.enabled }}
{{- /* The maintenance CronJob: one connection (concurrencyPolicy Forbid). */}}
{{- $total = add $total 1 }}
{{- $parts = append $parts "maintenance 1" }}
{{- end }}
{{- $allowed := sub (int $b.maxConnections) (int $b.reserved) }}
{{- if gt $total $allowed }}
{{- fail (printf "connection budget exceeded: the services may open %d PostgreSQL connections (%s) but connectionBudget allows %d (maxConnections %v - reserved %v); lower replicas, API_POOL_MAX_SIZE or COLLECTOR_WORKERS, or raise connectionBudget.maxConnections" $total (join ", " $parts) $allowed $b.maxConnections $b.reserved) }}
{{- end }}
{{- end }}

{{/*
A Kubernetes quantity (512Mi, 8Gi, 1Ti, 100G, bytes) in GiB, as a float.
*/}}
{{- define "telemetry.quantityGiB" -}}
{{- $q := toString . }}
{{- $digits := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- if not $digits }}{{ fail (printf "not a storage quantity: %q" $q) }}{{ end }}
{{- $unit := trimPrefix $digits $q }}
{{- $per := dict "" (divf 1.0 1073741824.0) "Ki" (divf 1.0 1048576.0) "Mi" (divf 1.0 1024.0) "Gi" 1.0 "Ti" 1024.0 "Pi" 1048576.0 "k" (divf 1000.0 1073741824.0) "M" (divf 1000000.0 1073741824.0) "G" (divf 1000000000.0 1073741824.0) "T" (divf 1000000000000.0 1073741824.0) }}
{{- if not (hasKey $per $unit) }}{{ fail (printf "not a storage quantity: %q" $q) }}{{ end }}
{{- mulf (float64 $digits) (index $per $unit) }}
{{- end }}

{{/*
What the PostgreSQL volume must hold with the maintenance job's retention, in GiB (docs/deployment.md):
raw datapoints for rawRetentionDays + 1 days (a day's partition is dropped once it is wholly past the
retention), 1-minute rollups for their retention + one 7-day partition, 1-hour rollups for theirs +
one 28-day partition, the WAL, and headroomPercent on top. Prints "total raw m1 h1" (GiB).
*/}}
{{- define "telemetry.postgresql.neededGiB" -}}
{{- $s := .Values.postgresql.sizing }}
{{- $m := .Values.maintenance }}
{{- $gib := 1073741824.0 }}
{{- $raw := divf (mulf (float64 $s.datapointsPerSecond) 86400.0 (float64 $s.bytesPerDatapoint) (addf (float64 $m.rawRetentionDays) 1.0)) $gib }}
{{- $m1 := divf (mulf (float64 $s.series) 1440.0 (float64 $s.bytesPerRollupRow) (addf (float64 $m.rollup1mRetentionDays) 7.0)) $gib }}
{{- $h1 := divf (mulf (float64 $s.series) 24.0 (float64 $s.bytesPerRollupRow) (addf (float64 $m.rollup1hRetentionDays) 28.0)) $gib }}
{{- $total := mulf (addf $raw $m1 $h1 (float64 $s.walGiB)) (addf 1.0 (divf (float64 $s.headroomPercent) 100.0)) }}
{{- printf "%d %.1f %.1f %.1f" (int (ceil $total)) $raw $m1 $h1 }}
{{- end }}

{{/*
The PostgreSQL claim's size: persistence.size, checked against what the retention needs, or when
empty exactly that. Without the maintenance job nothing is ever dropped and no size is enough: the
size given is used as it is (and must be given).
*/}}
{{- define "telemetry.postgresql.size" -}}
{{- $p := .Values.postgresql.persistence }}
{{- if not .Values.maintenance.enabled }}
{{- required "postgresql.persistence.size is required when maintenance.enabled is false" $p.size }}
{{- else }}
{{- $need := splitList " " (include "telemetry.postgresql.neededGiB" .) }}
{{- $total := int (index $need 0) }}
{{- if not $p.size }}
{{- printf "%dGi" $total }}
{{- else }}
{{- $have := include "telemetry.quantityGiB" $p.size | float64 }}
{{- if lt $have (float64 $total) }}
{{- fail (printf "postgresql volume too small for the retention: persistence.size %s but the data needs %d GiB (raw %s GiB for %v days at %v datapoints/s, 1-minute rollups %s GiB, 1-hour rollups %s GiB, WAL %v GiB, +%v%%); raise the size, lower maintenance.*RetentionDays, or leave the size empty to have it computed (docs/deployment.md)" $p.size $total (index $need 1) .Values.maintenance.rawRetentionDays .Values.postgresql.sizing.datapointsPerSecond (index $need 2) (index $need 3) .Values.postgresql.sizing.walGiB .Values.postgresql.sizing.headroomPercent) }}
{{- end }}
{{- $p.size }}
{{- end }}
{{- end }}
{{- end }}
