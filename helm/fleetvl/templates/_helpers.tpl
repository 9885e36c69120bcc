{{/*
Names are trimmed to 63 characters (DNS label limit) with no trailing dash; a component suffix
is added inside the limit so "<fullname>-controller" never exceeds it either.
*/}}
{{- define "fleetvl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleetvl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", the whole trimmed to 63 characters. Call with (list . "router"). */}}
{{- define "fleetvl.component" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $base := include "fleetvl.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $suffix -}}
{{- end -}}

{{- define "fleetvl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fleetvl.labels" -}}
helm.sh/chart: {{ include "fleetvl.chart" . }}
app.kubernetes.io/name: {{ include "fleetvl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleetvl
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component. Call with (list . "router"). */}}
{{- define "fleetvl.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "fleetvl.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of one component's objects. Call with (list . "router"). */}}
{{- define "fleetvl.componentLabels" -}}
{{ include "fleetvl.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "fleetvl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fleetvl.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fleetvl.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret with the admin token and API keys: the user's, or the one this chart renders. */}}
{{- define "fleetvl.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- include "fleetvl.component" (list . "secrets") -}}
{{- end -}}
{{- end -}}

{{- define "fleetvl.tlsSecretName" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- include "fleetvl.component" (list . "tls") -}}
{{- end -}}
{{- end -}}

{{/* The client CA is there when the user gave one, or brings their own Secret (ca.crt). */}}
{{- define "fleetvl.hasClientCa" -}}
{{- if or .Values.tls.existingSecret .Values.tls.clientCa -}}true{{- end -}}
{{- end -}}

{{- define "fleetvl.redisHost" -}}
{{- include "fleetvl.component" (list . "redis") -}}
{{- end -}}

{{/* The Redis URL when it is not a secret (bundled Redis, or an external plain URL). */}}
{{- define "fleetvl.redisPlainUrl" -}}
{{- if eq .Values.redis.mode "bundled" -}}
{{- printf "redis://%s:%d/0" (include "fleetvl.redisHost" .) (int .Values.redis.bundled.port) -}}
{{- else if not .Values.redis.external.existingSecret -}}
{{- required "redis.external.url is required with redis.mode=external (or redis.external.existingSecret)" .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* FLEETVL_REDIS_URL for the router and controller containers. */}}
{{- define "fleetvl.redisEnv" -}}
- name: FLEETVL_REDIS_URL
{{- if and (eq .Values.redis.mode "external") .Values.redis.external.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else }}
  value: {{ include "fleetvl.redisPlainUrl" . | quote }}
{{- end }}
{{- end -}}

{{- define "fleetvl.cloudServeService" -}}
{{- include "fleetvl.component" (list . "cloud-serve") -}}
{{- end -}}

{{/* Fails the render with a readable message when a required secret value is missing. */}}
{{- define "fleetvl.validateSecrets" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- $_ := required "secrets.controllerAdminToken is required (the controller's admin token; never generated) - or set secrets.existingSecret" .Values.secrets.controllerAdminToken -}}
{{- if not .Values.secrets.routerApiKeys -}}
{{- fail "secrets.routerApiKeys is required: a mapping API key -> tenant (never generated) - or set secrets.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) -}}
{{- $_ := required "tls.cert is required with tls.enabled (PEM certificate; never generated) - or set tls.existingSecret" .Values.tls.cert -}}
{{- $_ := required "tls.key is required with tls.enabled (PEM private key) - or set tls.existingSecret" .Values.tls.key -}}
{{- if and (or .Values.tls.controller.clientAuth .Values.tls.router.clientAuth) (not .Values.tls.clientCa) -}}
{{- fail "tls.clientCa is required when tls.controller.clientAuth or tls.router.clientAuth is on (the CA that signs the site agents' certificates) - or set tls.existingSecret with ca.crt" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A NetworkPolicy peer matching every pod of this release. */}}
{{- define "fleetvl.releasePeer" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ include "fleetvl.name" . }}
      app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Container resources with every quantity quoted ("1", not 1): Kubernetes quantities are
strings, and typed clients refuse numbers. */}}
{{- define "fleetvl.resources" -}}
{{- if not (or .requests .limits) }}
{}
{{- end }}
{{- range $section := list "requests" "limits" }}
{{- with (index $ $section) }}
{{ $section }}:
{{- range $k, $v := . }}
  {{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
