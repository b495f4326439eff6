{{/* Worker helpers: (list $ set). */}}

{{- define "longrun.worker.name" -}}
{{- include "longrun.componentName" (list (index . 0) (printf "worker-%s" (index . 1).name)) }}
{{- end }}

{{- define "longrun.worker.selectorLabels" -}}
{{ include "longrun.selectorLabels" (list (index . 0) "worker") }}
longrun.dev/worker-set: {{ (index . 1).name }}
{{- end }}

{{- define "longrun.worker.labels" -}}
{{ include "longrun.labels" (list (index . 0) "worker") }}
longrun.dev/worker-set: {{ (index . 1).name }}
{{- end }}

{{/* Grace period: above the drain window, so a scaled-down worker checkpoints and hands its jobs over
     instead of being killed mid-job. */}}
{{- define "longrun.worker.grace" -}}
{{- $root := index . 0 }}
{{- $set := index . 1 }}
{{- $drain := ceil (float64 (include "longrun.setting" (list $root "drain_seconds" "20"))) | int }}
{{- if $set.terminationGracePeriodSeconds }}
{{- if le (int $set.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "workers.sets[%s].terminationGracePeriodSeconds (%d) must exceed drain_seconds (%d): the kubelet would kill a draining worker" $set.name (int $set.terminationGracePeriodSeconds) $drain) }}
{{- end }}
{{- int $set.terminationGracePeriodSeconds }}
{{- else }}
{{- add $drain $root.Values.workers.drainMarginSeconds }}
{{- end }}
{{- end }}

{{/* Celery queue names of a set: the key prefix, a dot, the Longrun queue. */}}
{{- define "longrun.worker.celeryQueues" -}}
{{- $prefix := include "longrun.setting" (list (index . 0) "key_prefix" "longrun") }}
{{- $names := list }}
{{- range (index . 1).queues }}
{{- $names = append $names (printf "%s.%s" $prefix .) }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{/* The scaler's query: pods needed = ceil((queued + running) / concurrency) for the set's queues. Counting
     running jobs keeps busy pods; counting in SQL sees jobs that Redis-list length cannot (prefetched,
     priority lists, retry countdowns held by a worker, jobs the fair scheduler holds back, which stay `queued`).
     A delayed job (run_at still ahead) is not counted: no pod could run it yet. Queue names are schema-checked
     ([A-Za-z0-9_.-]). */}}
{{- define "longrun.worker.query" -}}
{{- $set := index . 1 }}
{{- $quoted := list }}
{{- range $set.queues }}
{{- $quoted = append $quoted (printf "'%s'" .) }}
{{- end }}
{{- printf "SELECT CEIL(COUNT(*)::numeric / %d)::int FROM jobs WHERE queue IN (%s) AND status IN ('queued', 'running', 'retrying') AND (run_at IS NULL OR run_at <= now())" (int $set.concurrency) (join ", " $quoted) }}
{{- end }}
