{{/* The keys of the Secret the chart creates (checked: what production refuses is refused here). */}}
{{- define "longrun.secretData" -}}
{{- $s := .Values.secrets }}
{{- $redisUrl := include "longrun.redisUrl" . }}
{{- if not $s.databaseUrl }}
{{- fail "secrets.databaseUrl is required (the external PostgreSQL, e.g. postgresql://user:password@host:5432/longrun), or set secrets.existingSecret" }}
{{- end }}
{{- if not $redisUrl }}
{{- fail "secrets.redisUrl is required (the external Redis), or set redis.enabled=true for an in-chart Redis, or set secrets.existingSecret" }}
{{- end }}
{{- if include "longrun.production" . }}
{{- if lt (len $s.tokenSecret) 32 }}
{{- fail "secrets.tokenSecret must be at least 32 characters when config.env is production" }}
{{- end }}
{{- end }}
{{ $s.keys.databaseUrl }}: {{ $s.databaseUrl | quote }}
{{ $s.keys.redisUrl }}: {{ $redisUrl | quote }}
{{- if $s.apiKeys }}
{{ $s.keys.apiKeys }}: {{ $s.apiKeys | quote }}
{{- end }}
{{- if $s.tokenSecret }}
{{ $s.keys.tokenSecret }}: {{ $s.tokenSecret | quote }}
{{- end }}
{{- if $s.apiKeyPepper }}
{{ $s.keys.apiKeyPepper }}: {{ $s.apiKeyPepper | quote }}
{{- end }}
{{- if .Values.workers.keda.enabled }}
{{ $s.keys.kedaDatabaseUrl }}: {{ include "longrun.kedaDatabaseUrl" . | quote }}
{{- end }}
{{- if $s.flowerBasicAuth }}
{{ $s.keys.flowerBasicAuth }}: {{ $s.flowerBasicAuth | quote }}
{{- end }}
{{- end }}
