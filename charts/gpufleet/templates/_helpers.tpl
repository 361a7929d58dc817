{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "gpufleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: fullnameOverride, else the release name
when it already holds the chart name, else "<release>-<chart>". Cluster-scoped
objects (ClusterRoles, bindings) carry it too, so two releases never collide.
*/}}
{{- define "gpufleet.fullname" -}}
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

{{/* "<chart>-<version>", for the helm.sh/chart label. */}}
{{- define "gpufleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that select the operator's pods; never change them in an upgrade. */}}
{{- define "gpufleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpufleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The labels of every object. */}}
{{- define "gpufleet.labels" -}}
helm.sh/chart: {{ include "gpufleet.chart" . }}
{{ include "gpufleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpufleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "gpufleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpufleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: a digest wins over the tag; the tag defaults to appVersion. */}}
{{- define "gpufleet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The leader-election Lease's name. */}}
{{- define "gpufleet.leaseName" -}}
{{- default (include "gpufleet.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The namespace of the probe pods: probes.namespace, else "<release namespace>-probes". */}}
{{- define "gpufleet.probeNamespace" -}}
{{- default (printf "%s-probes" .Release.Namespace | trunc 63 | trimSuffix "-") .Values.probes.namespace }}
{{- end }}

{{/* The ServiceAccount every probe pod runs as. */}}
{{- define "gpufleet.probeServiceAccountName" -}}
{{- .Values.probes.serviceAccount.name }}
{{- end }}

{{/* The probe image: probeTemplate.image, else the operator's own. */}}
{{- define "gpufleet.probeImage" -}}
{{- $image := .Values.probeTemplate.image }}
{{- if not $image.repository }}
{{- include "gpufleet.image" . }}
{{- else if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The default probe template, a PodTemplateSpec as YAML: `gpufleet probe` with
the probeTemplate values. Called with a dict: root (the chart's context),
gpus and products (the defaults of probeTemplate.gpus and .products: a
pool's hardware, or the ConfigMap's). gpufleet binds the pod to its node,
tolerates the onboarding taint, sets the ServiceAccount, restartPolicy and
activeDeadlineSeconds itself. Its labels stay the same across chart versions,
so an upgrade does not change the pools.
*/}}
{{- define "gpufleet.probeTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values.probeTemplate }}
{{- $gpus := int (default .gpus $v.gpus) }}
{{- $products := default .products $v.products }}
{{- if lt $gpus 1 }}
{{- fail "the probe template needs a number of GPUs: set probeTemplate.gpus, or the pool's hardware.gpusPerNode" }}
{{- end }}
{{- $args := list "probe" (printf "--gpus=%d" $gpus) }}
{{- range $products }}
{{- $args = append $args (printf "--product=%s" .) }}
{{- end }}
{{- if $v.nvlinks }}
{{- $args = append $args (printf "--nvlinks=%d" (int $v.nvlinks)) }}
{{- end }}
{{- if $v.dcgmLevel }}
{{- $args = append $args (printf "--dcgm-level=%d" (int $v.dcgmLevel)) }}
{{- end }}
{{- $args = append $args (printf "--termination-log=%s" $v.terminationMessagePath) }}
{{- $args = concat $args $v.extraArgs }}
{{- $limits := merge (dict "nvidia.com/gpu" $gpus) (deepCopy ($v.resources.limits | default dict)) }}
{{- $resources := merge (dict "limits" $limits) (deepCopy ($v.resources | default dict)) }}
metadata:
  labels:
    app.kubernetes.io/name: gpufleet-probe
    app.kubernetes.io/part-of: gpufleet
spec:
  restartPolicy: Never
  {{- with $v.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if not $v.privileged }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  {{- end }}
  containers:
    - name: probe
      image: {{ include "gpufleet.probeImage" $root }}
      imagePullPolicy: {{ default $root.Values.image.pullPolicy $v.image.pullPolicy }}
      args:
        {{- toYaml $args | nindent 8 }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
      {{- if $v.privileged }}
        privileged: true
        runAsUser: 0
      {{- else }}
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        runAsNonRoot: true
        capabilities:
          drop:
            - ALL
      {{- end }}
      terminationMessagePath: {{ $v.terminationMessagePath }}
      terminationMessagePolicy: File
{{- end }}
