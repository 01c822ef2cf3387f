{{/*
Names and labels shared by every resource of the chart.
*/}}

{{- define "courier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 63 characters (the DNS label limit), leaving room
for the "-gateway" and "-worker" suffixes.
*/}}
{{- define "courier.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "courier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "courier.labels" -}}
helm.sh/chart: {{ include "courier.chart" . }}
{{ include "courier.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: courier
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "courier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "courier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of one component: include with (dict "ctx" $ "component" "gateway"). */}}
{{- define "courier.componentLabels" -}}
{{ include "courier.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "courier.componentSelectorLabels" -}}
{{ include "courier.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "courier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "courier.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "courier.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret that holds the connection URLs and tokens; it must exist already. */}}
{{- define "courier.secretName" -}}
{{- required "existingSecret must name a Secret holding COURIER_AMQP_URL, COURIER_REDIS_URL and COURIER_ADMIN_TOKEN (see values.yaml)" .Values.existingSecret }}
{{- end }}

{{/* The intake queue that the worker's fan-out stage consumes. */}}
{{- define "courier.eventsQueue" -}}
{{- printf "%scourier.events.q" (.Values.config.COURIER_PREFIX | default "") }}
{{- end }}

{{/* The queue of delivery jobs. */}}
{{- define "courier.deliveriesQueue" -}}
{{- printf "%scourier.deliveries" (.Values.config.COURIER_PREFIX | default "") }}
{{- end }}

{{/*
Environment taken from the existing Secret. The component's dict says whether it
gets the admin token (the gateway only).
*/}}
{{- define "courier.secretEnv" -}}
{{- $secret := include "courier.secretName" .ctx }}
{{- $keys := .ctx.Values.secretKeys }}
- name: COURIER_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.amqpUrl }}
- name: COURIER_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.redisUrl }}
{{- if .adminToken }}
- name: COURIER_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.adminToken }}
{{- end }}
{{- if $keys.secretKeys }}
# Keys for encrypting webhook secrets at rest; optional in the Secret.
- name: COURIER_SECRET_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.secretKeys }}
      optional: true
{{- end }}
{{- end }}

{{/* The restricted container security context. */}}
{{- define "courier.containerSecurityContext" -}}
{{ toYaml .Values.securityContext }}
{{- end }}

{{/* ConfigMap data: non-empty values only, so that an empty value leaves the binary's default. */}}
{{- define "courier.configData" -}}
{{- range $k, $v := . }}
{{- if ne (toString $v) "" }}
{{ $k }}: {{ toString $v | quote }}
{{- end }}
{{- end }}
{{- end }}
