{{/*
Shared pieces. Every object is built from these so that names, labels,
placement annotations and the Pod boilerplate (security context, probes on the
admin port, grace period) are the same everywhere.
*/}}

{{/* Object name prefix: the release name (the add-on name under the framework). */}}
{{- define "cluster-relay.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Fails the render on values that cannot work; included by every template. */}}
{{- define "cluster-relay.validate" -}}
{{- if not .Values.clusterName -}}
{{- fail "clusterName is required: the name of the managed cluster (the add-on framework sets it)" -}}
{{- end -}}
{{- if eq .Values.installMode "Default" -}}
{{- fail "cluster-relay runs in hosted mode only: enable the add-on with the addon.open-cluster-management.io/hosting-cluster-name annotation" -}}
{{- end -}}
{{- if lt (int .Values.cleanup.activeDeadlineSeconds) (add (int .Values.cleanup.giveUpAfterSeconds) 60) -}}
{{- fail "cleanup.activeDeadlineSeconds must exceed cleanup.giveUpAfterSeconds by 60 at least: a Job killed at its deadline fails, and a failed pre-delete Job blocks the add-on's deletion" -}}
{{- end -}}
{{- if and .Values.cleanup.enabled (not .Values.provisioner.enabled) -}}
{{- fail "cleanup.enabled needs provisioner.enabled: the cleanup Job removes what the provisioner made" -}}
{{- end -}}
{{- end -}}

{{/* "true" when manifests for location (hosting or managed) are rendered. */}}
{{- define "cluster-relay.renders" -}}
{{- $ctx := index . 0 -}}{{- $location := index . 1 -}}
{{- if or (eq $ctx.Values.manifests "all") (eq $ctx.Values.manifests $location) -}}true{{- end -}}
{{- end -}}

{{/*
The namespace of the hosting-side objects. In hosted mode the framework means
addonInstallNamespace as the agent's namespace on the hosting cluster: the
registration agent writes the hub kubeconfig Secret there.
*/}}
{{- define "cluster-relay.hostingNamespace" -}}
{{- if .Values.hostingNamespace -}}{{ .Values.hostingNamespace }}
{{- else if eq .Values.installMode "Hosted" -}}{{ .Values.addonInstallNamespace | default .Release.Namespace }}
{{- else -}}{{ .Release.Namespace }}{{- end -}}
{{- end -}}

{{/*
The namespace of the managed-side objects: managedNamespace; else, in hosted
mode, the klusterlet's namespace for all add-ons; else addonInstallNamespace
or the release namespace (plain Helm).
*/}}
{{- define "cluster-relay.managedNamespace" -}}
{{- if .Values.managedNamespace -}}{{ .Values.managedNamespace }}
{{- else if eq .Values.installMode "Hosted" -}}open-cluster-management-agent-addon
{{- else -}}{{ .Values.addonInstallNamespace | default .Release.Namespace }}{{- end -}}
{{- end -}}

{{/* The Secret with the managed kubeconfig the provisioner writes. */}}
{{- define "cluster-relay.managedKubeconfigSecret" -}}
{{- .Values.managedKubeConfigSecret | default "cluster-relay-managed-kubeconfig" -}}
{{- end -}}

{{/* The exit relay's Service on the managed cluster. */}}
{{- define "cluster-relay.exitService" -}}
{{ include "cluster-relay.fullname" . }}-service-relay
{{- end -}}

{{/*
The agent image: the add-on manager's (global.imageOverrides.agent, after
AddOnDeploymentConfig registries), else image.repository:tag.
*/}}
{{- define "cluster-relay.image" -}}
{{- $overrides := .Values.global.imageOverrides | default dict -}}
{{- $overrides.agent | default (printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion)) -}}
{{- end -}}

{{/* Selector labels of component (second argument). */}}
{{- define "cluster-relay.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: cluster-relay
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels of component (second argument). */}}
{{- define "cluster-relay.labels" -}}
{{- $ctx := index . 0 -}}
{{ include "cluster-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $ctx.Chart.Name $ctx.Chart.Version }}
cluster-relay.io/cluster: {{ $ctx.Values.clusterName }}
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
metadata for an object of component at location: (list . component location
namespace). Empty namespace: cluster-scoped.
*/}}
{{- define "cluster-relay.metadata" -}}
{{- $ctx := index . 0 -}}{{- $component := index . 1 -}}{{- $location := index . 2 -}}{{- $ns := index . 3 -}}
{{- with $ns }}
namespace: {{ . }}
{{- end }}
labels:
  {{- include "cluster-relay.labels" (list $ctx $component) | nindent 2 }}
annotations:
  addon.open-cluster-management.io/hosted-manifest-location: {{ $location }}
{{- end -}}

{{/* The admin-port container port, probes and shared container settings. */}}
{{- define "cluster-relay.containerCommon" -}}
{{- $ctx := index . 0 -}}{{- $resources := index . 1 -}}
image: {{ include "cluster-relay.image" $ctx }}
imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
command: ["/agent"]
env:
  - name: POD_NAME
    valueFrom:
      fieldRef: {fieldPath: metadata.name}
  - name: POD_NAMESPACE
    valueFrom:
      fieldRef: {fieldPath: metadata.namespace}
livenessProbe:
  httpGet: {path: /healthz, port: admin}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: admin}
  periodSeconds: 5
  failureThreshold: 2
securityContext:
  {{- toYaml $ctx.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml $resources | nindent 2 }}
{{- end -}}

{{/* The flags every long-running component gets. */}}
{{- define "cluster-relay.commonArgs" -}}
- --admin-addr=0.0.0.0:{{ .Values.adminPort }}
- --log-format={{ .Values.logFormat }}
- --log-level={{ .Values.logLevel }}
- --shutdown-grace-period={{ .Values.shutdownGracePeriodSeconds }}s
{{- end -}}

{{/* The upstream pool's flags, for every component that dials upstreams. */}}
{{- define "cluster-relay.poolArgs" -}}
- --upstream-max-idle-per-origin={{ .Values.upstreamPool.maxIdlePerOrigin }}
- --upstream-idle-timeout={{ .Values.upstreamPool.idleTimeout }}
{{- end -}}

{{/* Pod spec fields shared by every Pod: (list . serviceAccountName). */}}
{{- define "cluster-relay.podCommon" -}}
{{- $ctx := index . 0 -}}
serviceAccountName: {{ index . 1 }}
terminationGracePeriodSeconds: {{ add (int $ctx.Values.shutdownGracePeriodSeconds) 10 }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- $nodeSelector := merge (dict) ($ctx.Values.global.nodeSelector | default dict) $ctx.Values.nodeSelector }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := $ctx.Values.tolerations }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
A ServiceAccount on the hosting cluster, with a Role that may only read the
managed kubeconfig Secret: (list . component name).
*/}}
{{- define "cluster-relay.kubeconfigReader" -}}
{{- $ctx := index . 0 -}}{{- $component := index . 1 -}}{{- $name := index . 2 -}}
{{- $ns := include "cluster-relay.hostingNamespace" $ctx -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  {{- include "cluster-relay.metadata" (list $ctx $component "hosting" $ns) | nindent 2 }}
automountServiceAccountToken: true
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}
  {{- include "cluster-relay.metadata" (list $ctx $component "hosting" $ns) | nindent 2 }}
rules:
  # Watched by name (a metadata.name field selector), never listed whole.
  - apiGroups: [""]
    resources: [secrets]
    resourceNames: [{{ include "cluster-relay.managedKubeconfigSecret" $ctx }}]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}
  {{- include "cluster-relay.metadata" (list $ctx $component "hosting" $ns) | nindent 2 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ $name }}
    namespace: {{ $ns }}
{{- end -}}

{{/* A metrics Service for component: (list . component location namespace). */}}
{{- define "cluster-relay.metricsService" -}}
{{- $ctx := index . 0 -}}{{- $component := index . 1 -}}
{{- if $ctx.Values.metricsServices }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "cluster-relay.fullname" $ctx }}-{{ $component }}-metrics
  {{- include "cluster-relay.metadata" . | nindent 2 }}
spec:
  type: ClusterIP
  selector:
    {{- include "cluster-relay.selectorLabels" (list $ctx $component) | nindent 4 }}
  ports:
    - name: metrics
      port: {{ $ctx.Values.adminPort }}
      targetPort: admin
      protocol: TCP
{{- end }}
{{- end -}}

{{/* The provisioner flags the Deployment and the cleanup Job share. */}}
{{- define "cluster-relay.provisionerArgs" -}}
{{- $p := .Values.provisioner -}}
- --namespace={{ include "cluster-relay.hostingNamespace" . }}
- --source-secret={{ $p.sourceSecret }}
- --source-secret-key={{ $p.sourceSecretKey }}
- --target-secret={{ include "cluster-relay.managedKubeconfigSecret" . }}
- --service-account={{ $p.serviceAccount }}
- --service-account-namespace={{ include "cluster-relay.managedNamespace" . }}
{{- range $p.clusterRoles }}
- --cluster-role={{ . }}
{{- end }}
{{- if $p.leaderElection.enabled }}
- --leader-elect
- --leader-election-lease-name={{ $p.leaderElection.leaseName }}
{{- end }}
{{- end -}}

{{/* The flags that make a component follow the managed kubeconfig Secret. */}}
{{- define "cluster-relay.followArgs" -}}
- --managed-kubeconfig-secret={{ include "cluster-relay.hostingNamespace" . }}/{{ include "cluster-relay.managedKubeconfigSecret" . }}
{{- end -}}
