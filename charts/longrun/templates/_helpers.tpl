{{/* Names ---------------------------------------------------------------------------------------------- */}}

{{- define "longrun.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "longrun.fullname" -}}
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

{{/* "<fullname>-<component>": call with (list $ "gateway"). */}}
{{- define "longrun.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "longrun.fullname" $root | trunc 40 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "longrun.secretName" -}}
{{- default (include "longrun.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "longrun.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "longrun.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels: (list $ "component"). Selector labels are the stable subset. --------------------------------- */}}

{{- define "longrun.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "longrun.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "longrun.labels" -}}
{{- $root := index . 0 -}}
{{ include "longrun.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: longrun
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The release's pods, whatever their component (NetworkPolicy peers). */}}
{{- define "longrun.releaseSelector" -}}
app.kubernetes.io/name: {{ include "longrun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Image: (dict "root" $ "image" .Values.gateway.image); empty fields fall back to .Values.image. ---------- */}}

{{- define "longrun.image" -}}
{{- $global := .root.Values.image }}
{{- $own := .image | default dict }}
{{- $repository := default $global.repository $own.repository }}
{{- $tag := default (default .root.Chart.AppVersion $global.tag) $own.tag -}}
image: {{ printf "%s:%s" $repository $tag | quote }}
imagePullPolicy: {{ default $global.pullPolicy $own.pullPolicy }}
{{- end }}

{{/* Configuration -------------------------------------------------------------------------------------- */}}

{{/* The public base URL of the hub that the gateway hands to clients. */}}
{{- define "longrun.hubPublicUrl" -}}
{{- if .Values.ingress.enabled -}}
{{- printf "%s://%s" (ternary "https" "http" (ne .Values.ingress.hub.tlsSecretName "")) .Values.ingress.hub.host }}
{{- else if and .Values.gatewayApi.enabled .Values.gatewayApi.hub.hostnames -}}
{{- printf "%s://%s" .Values.gatewayApi.scheme (first .Values.gatewayApi.hub.hostnames) }}
{{- else -}}
{{- printf "http://%s:%d" (include "longrun.componentName" (list . "hub")) (int .Values.hub.service.port) }}
{{- end }}
{{- end }}

{{/* Every LONGRUN_* variable of the ConfigMap, as a YAML map: chart defaults, then `config`, then what the
     chart owns (ports, storage). */}}
{{- define "longrun.configData" -}}
{{- $data := dict
    "LONGRUN_ENV" "production"
    "LONGRUN_BIND_HOST" "0.0.0.0"
    "LONGRUN_HUB_PUBLIC_URL" (include "longrun.hubPublicUrl" .)
}}
{{- if .Values.migrations.enabled }}
{{- /* The hook Job migrates; the services wait for the schema instead of racing to create it. */}}
{{- $_ := set $data "LONGRUN_MIGRATE_ON_START" "false" }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{- $_ := set $data (printf "LONGRUN_%s" (upper $key)) (toString $value) }}
{{- end }}
{{- $_ := set $data "LONGRUN_QUEUES" (include "longrun.queues" .) }}
{{- $_ := set $data "LONGRUN_GATEWAY_PORT" (toString .Values.gateway.port) }}
{{- $_ := set $data "LONGRUN_HUB_PORT" (toString .Values.hub.port) }}
{{- $_ := set $data "LONGRUN_STORAGE_DIR" .Values.storage.mountPath }}
{{- toYaml $data }}
{{- end }}

{{/* LONGRUN_QUEUES: the queues some worker set consumes, then those served outside this release. The gateway
     refuses a job for any other queue (422), and accepts jobs for these even while KEDA has a set at zero. */}}
{{- define "longrun.queues" -}}
{{- $names := list }}
{{- range .Values.workers.sets }}
{{- $names = concat $names .queues }}
{{- end }}
{{- join "," (uniq (concat $names (.Values.workers.queuesServedElsewhere | default list))) }}
{{- end }}

{{/* One effective setting by snake_case name: (list $ "drain_seconds" "20"). */}}
{{- define "longrun.setting" -}}
{{- $root := index . 0 }}
{{- $data := include "longrun.configData" $root | fromYaml }}
{{- index $data (printf "LONGRUN_%s" (upper (index . 1))) | default (index . 2) }}
{{- end }}

{{- define "longrun.production" -}}
{{- if eq (include "longrun.setting" (list . "env" "production")) "production" }}true{{ end }}
{{- end }}

{{- define "longrun.redisUrl" -}}
{{- if .Values.secrets.redisUrl }}
{{- .Values.secrets.redisUrl }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://%s:%d/0" (include "longrun.componentName" (list . "redis")) (int .Values.redis.port) }}
{{- end }}
{{- end }}

{{/* The libpq URL KEDA's postgresql trigger uses: kedaDatabaseUrl, else databaseUrl without "+driver". */}}
{{- define "longrun.kedaDatabaseUrl" -}}
{{- if .Values.secrets.kedaDatabaseUrl }}
{{- .Values.secrets.kedaDatabaseUrl }}
{{- else }}
{{- regexReplaceAll "^postgres(ql)?\\+[a-z0-9_]+://" .Values.secrets.databaseUrl "postgresql://" }}
{{- end }}
{{- end }}

{{/* Checksums of what the pods read, so that a change rolls them. */}}
{{- define "longrun.checksums" -}}
checksum/config: {{ include "longrun.configData" . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/common/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/* Pod and container building blocks ----------------------------------------------------------------- */}}

{{- define "longrun.podSpecCommon" -}}
serviceAccountName: {{ include "longrun.serviceAccountName" . }}
automountServiceAccountToken: false
{{- if .Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Environment of every Longrun container: (dict "root" $ "extra" .Values.gateway.extraEnv "secret" name
     "config" name); secret and config default to the release's. */}}
{{- define "longrun.env" -}}
{{- $root := .root }}
{{- $secret := default (include "longrun.secretName" $root) .secret }}
{{- $keys := $root.Values.secrets.keys }}
{{- $optional := not (include "longrun.production" $root) -}}
envFrom:
  - configMapRef:
      name: {{ default (include "longrun.componentName" (list $root "config")) .config }}
env:
  - name: LONGRUN_DATABASE_URL
    valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $keys.databaseUrl }}}}
  - name: LONGRUN_REDIS_URL
    valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $keys.redisUrl }}}}
  - name: LONGRUN_API_KEYS
    valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $keys.apiKeys }}, optional: {{ $optional }}}}
  - name: LONGRUN_TOKEN_SECRET
    valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $keys.tokenSecret }}, optional: {{ $optional }}}}
  - name: LONGRUN_API_KEY_PEPPER
    valueFrom: {secretKeyRef: {name: {{ $secret }}, key: {{ $keys.apiKeyPepper }}, optional: true}}
  # No bytecode writes on the read-only root filesystem; HOME for libraries that want one.
  - {name: PYTHONDONTWRITEBYTECODE, value: "1"}
  - {name: PYTHONUNBUFFERED, value: "1"}
  - {name: HOME, value: /tmp}
  {{- with $root.Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with .extra }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "longrun.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{- define "longrun.storageVolume" -}}
- name: storage
  {{- if .Values.storage.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.storage.existingClaim }}
  {{- else if .Values.storage.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "longrun.componentName" (list . "files") }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}

{{/* A pause before SIGTERM as an exec action: the image may have no shell and no `sleep` binary. */}}
{{- define "longrun.preStop" -}}
{{- if gt (int .) 0 -}}
lifecycle:
  preStop:
    exec:
      command: ["python", "-c", "import time; time.sleep({{ int . }})"]
{{- end }}
{{- end }}

{{/* HTTP probes of a service: (list port startupFailureThreshold). */}}
{{- define "longrun.httpProbes" -}}
{{- $port := index . 0 -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ $port }}}
  periodSeconds: 2
  failureThreshold: {{ index . 1 }}
livenessProbe:
  httpGet: {path: /healthz, port: {{ $port }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ $port }}}
  periodSeconds: 5
  timeoutSeconds: 4
  failureThreshold: 2
{{- end }}
