{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "weiling-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of every resource: the release name, plus the chart name unless the release name contains it.
*/}}
{{- define "weiling-relay.fullname" -}}
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

{{- define "weiling-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "weiling-relay.labels" -}}
helm.sh/chart: {{ include "weiling-relay.chart" . }}
{{ include "weiling-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: weiling-relay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable).
*/}}
{{- define "weiling-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weiling-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "weiling-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "weiling-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "weiling-relay.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
"true" in multi-app mode: the whole relay.toml comes from the user's Secret (config.existingSecretFile).
*/}}
{{- define "weiling-relay.multiApp" -}}
{{- if .Values.config.existingSecretFile.name }}true{{ end }}
{{- end }}

{{/*
The Secret holding the single-app credentials: the user's existingSecret, or the one this chart renders.
*/}}
{{- define "weiling-relay.secretName" -}}
{{- default (include "weiling-relay.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/*
"true" when this chart renders the single-app Secret itself.
*/}}
{{- define "weiling-relay.createSecret" -}}
{{- if and (not (include "weiling-relay.multiApp" .)) (not .Values.secret.existingSecret) .Values.secret.create }}true{{ end }}
{{- end }}

{{/*
Where the relay reads its --config file inside the container.
*/}}
{{- define "weiling-relay.configPath" -}}
/etc/weiling-relay/relay.toml
{{- end }}

{{/*
The relay's shutdown after SIGTERM (drain grace + drain deadline) in whole seconds, rounded up.
*/}}
{{- define "weiling-relay.drainSeconds" -}}
{{- div (add (int64 .Values.config.server.drainGraceMs) (int64 .Values.config.server.drainDeadlineMs) 999) 1000 }}
{{- end }}

{{/*
terminationGracePeriodSeconds = preStop sleep + (drain grace + drain deadline, rounded up) + margin.
Kubernetes counts the preStop hook inside the grace period, so the relay always gets its full drain after
SIGTERM.
*/}}
{{- define "weiling-relay.terminationGracePeriodSeconds" -}}
{{- add (int64 .Values.shutdown.preStopSleepSeconds) (include "weiling-relay.drainSeconds" . | int64) (int64 .Values.shutdown.graceMarginSeconds) }}
{{- end }}

{{/*
A TOML array of integers.
*/}}
{{/*
One `[events]` rule as a TOML inline table: { entity = …, ids = […], each = …, when = { … } }.
*/}}
{{- define "weiling-relay.eventRule" -}}
{ {{- with .entity }} entity = {{ . | toJson }},{{ end }} ids = {{ .ids | toJson }}{{ with .each }}, each = {{ . | toJson }}{{ end }}{{ with .when }}, when = { {{- range $i, $p := keys . | sortAlpha }}{{ if $i }},{{ end }} {{ $p | toJson }} = {{ index $.when $p | toJson }}{{ end }} }{{ end }} }
{{- end }}

{{- define "weiling-relay.tomlIntList" -}}
[{{ range $i, $c := . }}{{ if $i }}, {{ end }}{{ int64 $c }}{{ end }}]
{{- end }}

{{/*
Every check the schema cannot express; included by the Deployment so a bad combination fails the render
with a message that names the value to fix.
*/}}
{{- define "weiling-relay.validate" -}}
{{- $s := .Values.secret }}
{{- $inline := list }}
{{- range $k := list "appId" "appSecret" "token" "encodingAesKey" "amqpUrl" "signRecordsKey" }}
{{- if index $s $k }}{{ $inline = append $inline (printf "secret.%s" $k) }}{{ end }}
{{- end }}
{{- if include "weiling-relay.multiApp" . }}
{{- $found := $inline }}
{{- if $s.existingSecret }}{{ $found = append $found "secret.existingSecret" }}{{ end }}
{{- if $found }}
{{- fail (printf "config.existingSecretFile.name is set (multi-app mode: that Secret holds the whole relay.toml, [[apps]] and amqp.url included), so leave %s empty" (join ", " $found)) }}
{{- end }}
{{- else if $s.existingSecret }}
{{- if $inline }}
{{- fail (printf "secret.existingSecret=%q supplies the credentials; remove the inline values %s" $s.existingSecret (join ", " $inline)) }}
{{- end }}
{{- else if not $s.create }}
{{- fail "secret.create=false needs secret.existingSecret (a Secret with the keys app-id, app-secret, token, encoding-aes-key, amqp-url) or config.existingSecretFile.name (multi-app)" }}
{{- else }}
{{- $missing := list }}
{{- range $k := list "appId" "appSecret" "token" "encodingAesKey" "amqpUrl" }}
{{- if not (index $s $k) }}{{ $missing = append $missing (printf "secret.%s" $k) }}{{ end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "no credentials configured: set secret.existingSecret to a Secret with the keys app-id, app-secret, token, encoding-aes-key and amqp-url, or give %s (single app), or config.existingSecretFile.name (several apps)" (join ", " $missing)) }}
{{- end }}
{{- end }}
{{- $c := .Values.config }}
{{- if le (int64 $c.amqp.prefetch) (int64 $c.window.maxIds) }}
{{- fail (printf "config.amqp.prefetch (%d) must be larger than config.window.maxIds (%d), or a window could never fill" (int64 $c.amqp.prefetch) (int64 $c.window.maxIds)) }}
{{- end }}
{{- if ge (int64 $c.amqp.maxUnackedPerApp) (int64 $c.amqp.prefetch) }}
{{- fail (printf "config.amqp.maxUnackedPerApp (%d) must be less than config.amqp.prefetch (%d), or one app could still take every unacked slot" (int64 $c.amqp.maxUnackedPerApp) (int64 $c.amqp.prefetch)) }}
{{- end }}
{{- if and $c.amqp.sharedInbox (gt (int64 $c.amqp.inboxPartitions) 1) }}
{{- fail "config.amqp.sharedInbox applies to one inbox queue only (inboxPartitions = 1); partitions are always shared out one replica each" }}
{{- end }}
{{- $most := int64 .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}{{ $most = int64 .Values.autoscaling.maxReplicas }}{{ end }}
{{- if and $c.amqp.consumeInbox (eq (int64 $c.amqp.inboxPartitions) 1) (not $c.amqp.sharedInbox) (gt $most 1) }}
{{- fail (printf "up to %d replicas consume one inbox queue: only one of them would enrich (the others wait on standby). Set config.amqp.inboxPartitions to at least %d so they share the work one customer per replica, or config.amqp.sharedInbox=true to have every replica consume the one queue, accepting that two replicas may fetch one customer at once and a record's fetched_at may order its states wrongly" $most $most) }}
{{- end }}
{{- if lt (int64 $c.security.replayWindowS) (mul 2 (int64 $c.security.timestampToleranceS)) }}
{{- fail "config.security.replayWindowS must be at least twice config.security.timestampToleranceS" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) }}
{{- fail "ingress.enabled needs at least one entry in ingress.hosts (the host Weiling calls)" }}
{{- end }}
{{- $hpa := .Values.autoscaling }}
{{- if and $hpa.enabled (gt (int64 $hpa.minReplicas) (int64 $hpa.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and $hpa.enabled (kindIs "invalid" $hpa.targetCPUUtilizationPercentage) (kindIs "invalid" $hpa.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name (list "WEILING_RELAY__SERVER__LISTEN" "WEILING_RELAY__SERVER__DRAIN_DEADLINE_MS" "WEILING_RELAY__SERVER__DRAIN_GRACE_MS") }}
{{- fail (printf "extraEnv must not set %s: use config.server.port / bindAddress / drainDeadlineMs / drainGraceMs" .name) }}
{{- end }}
{{- end }}
{{- end }}
