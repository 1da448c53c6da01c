{{/*
Checks every template runs first: the namespace the roles' Secrets live in,
and the values the schema cannot relate to each other.
*/}}
{{- define "isthmus.check" -}}
{{- if ne .Release.Namespace "isthmus-system" -}}
{{- fail (printf "install into the namespace isthmus-system (helm install --namespace isthmus-system), not %q: isthmusctl join wrote the broker credential and the CA there, and the roles read them there" .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* labels are on every object. */}}
{{- define "isthmus.labels" -}}
app.kubernetes.io/name: isthmus
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: isthmus
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector of one component's pods; call with (list $ "agent"). */}}
{{- define "isthmus.selector" -}}
app.kubernetes.io/name: isthmus
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* componentLabels: labels and selector of one component; (list $ "agent"). */}}
{{- define "isthmus.componentLabels" -}}
{{ include "isthmus.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "isthmus.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
serviceAccount is the ServiceAccount a role's rights are bound to: its own
in mode "roles", the one of the `isthmus all` pod in mode "all"; (list $ "agent").
*/}}
{{- define "isthmus.serviceAccount" -}}
{{- if eq (index . 0).Values.mode "all" -}}isthmus{{- else -}}isthmus-{{ index . 1 }}{{- end -}}
{{- end -}}

{{/* tunnelLease is the Lease the tunnel replicas elect their active one by. */}}
{{- define "isthmus.tunnelLease" -}}
isthmus-tunnel-{{ .Values.clusterID }}
{{- end -}}

{{/* env names one flag's environment variable: ISTHMUS_ and the flag in capitals. */}}
{{- define "isthmus.env" -}}
- name: ISTHMUS_{{ index . 0 }}
  value: {{ index . 1 | toString | quote }}
{{- end -}}

{{/* commonEnv are the flags every role shares; (list $ METRICS_ADDR ROLE),
ROLE naming whose broker identity the process uses (the agent's when
left out, as in mode "all"). */}}
{{- define "isthmus.commonEnv" -}}
{{- $ := index . 0 -}}
{{ include "isthmus.env" (list "CLUSTER_ID" $.Values.clusterID) }}
{{ include "isthmus.env" (list "KUBE_API_QPS" $.Values.kubeAPI.qps) }}
{{ include "isthmus.env" (list "KUBE_API_BURST" $.Values.kubeAPI.burst) }}
{{ include "isthmus.env" (list "METRICS_ADDR" (index . 1)) }}
{{ include "isthmus.env" (list "LOG_LEVEL" $.Values.logLevel) }}
{{ include "isthmus.env" (list "LOG_FORMAT" $.Values.logFormat) }}
{{- $role := "agent" }}{{ if gt (len .) 2 }}{{ $role = index . 2 }}{{ end }}
{{ include "isthmus.env" (list "BROKER_SECRET" (include "isthmus.roleBrokerSecret" (list $ $role))) }}
{{- end -}}

{{/* brokerSecret is the Secret holding the agent's broker kubeconfig. */}}
{{- define "isthmus.brokerSecret" -}}
{{ .Values.broker.existingSecret | default "isthmus-broker" }}
{{- end -}}

{{/*
roleBrokerSecret is the Secret holding one role's broker kubeconfig; (list $
"xds"). Each role has its own identity on the broker (isthmusctl join
writes all three): the agent's is brokerSecret, the xDS server's and the
tunnel's are brokerSecret-xds and brokerSecret-tunnel (mcs/setup.RoleSecret).
The resolver talks to no broker and gets the agent's name, unread.
*/}}
{{- define "isthmus.roleBrokerSecret" -}}
{{- $base := include "isthmus.brokerSecret" (index . 0) -}}
{{- if has (index . 1) (list "xds" "tunnel") -}}{{ $base }}-{{ index . 1 }}{{- else -}}{{ $base }}{{- end -}}
{{- end -}}

{{/*
factsEnv are this cluster's facts that the agent and the xDS server both
read: flags of the process, not of a role, so they are given once, and
unprefixed in `isthmus all` too (cmd/isthmus/facts.go).
*/}}
{{- define "isthmus.factsEnv" -}}
{{- with .Values.region }}
{{ include "isthmus.env" (list "REGION" .) }}
{{- end }}
{{- with .Values.zone }}
{{ include "isthmus.env" (list "ZONE" .) }}
{{- end }}
{{ include "isthmus.env" (list "DATAPLANE" .Values.dataplane) }}
{{ include "isthmus.env" (list "GATEWAY_SERVICE" (print .Release.Namespace "/isthmus-gateway")) }}
{{ include "isthmus.env" (list "GATEWAY_INGRESS_PORT" .Values.gateway.ingressPort) }}
{{ include "isthmus.env" (list "LEASE_DURATION" .Values.agent.leaseDuration) }}
{{- end -}}

{{/*
The roles' own flags as environment variables; (list $ PREFIX), PREFIX
empty for a role alone and ROLE_ in `isthmus all`, whose flags carry the
role's name.
*/}}
{{- define "isthmus.agentEnv" -}}
{{- $ := index . 0 -}}{{- $p := index . 1 -}}
{{- if eq $p "" }}
{{ include "isthmus.factsEnv" $ }}
{{- end }}
{{- with $.Values.podCIDRs }}
{{ include "isthmus.env" (list (print $p "POD_CIDRS") (join "," .)) }}
{{- end }}
{{- with $.Values.serviceCIDRs }}
{{ include "isthmus.env" (list (print $p "SERVICE_CIDRS") (join "," .)) }}
{{- end }}
{{ include "isthmus.env" (list (print $p "WITHDRAW_AFTER") $.Values.agent.withdrawAfter) }}
{{ include "isthmus.env" (list (print $p "MAX_IMPORTS_PER_CLUSTER") (int64 $.Values.agent.maxImportsPerCluster)) }}
{{ include "isthmus.env" (list (print $p "LEADER_ELECT") "true") }}
{{ include "isthmus.env" (list (print $p "LEADER_ELECT_NAMESPACE") $.Release.Namespace) }}
{{ include "isthmus.env" (list (print $p "EGRESS_PORTS") $.Values.gateway.egressPorts) }}
{{- end -}}

{{- define "isthmus.dnsEnv" -}}
{{- $ := index . 0 -}}{{- $p := index . 1 -}}
{{ include "isthmus.env" (list (print $p "LISTEN") ":1053") }}
{{ include "isthmus.env" (list (print $p "DOMAIN") $.Values.dns.zone) }}
{{- with $.Values.dns.clusterZone }}
{{ include "isthmus.env" (list (print $p "CLUSTER_ZONE") .) }}
{{- end }}
{{ include "isthmus.env" (list (print $p "TTL") $.Values.dns.ttl) }}
{{ include "isthmus.env" (list (print $p "MAX_UDP_SIZE") $.Values.dns.maxUDPSize) }}
{{- with $.Values.dns.clusterIP }}
{{ include "isthmus.env" (list (print $p "NS_ADDR") .) }}
{{- end }}
{{- end -}}

{{- define "isthmus.xdsEnv" -}}
{{- $ := index . 0 -}}{{- $p := index . 1 -}}
{{- if eq $p "" }}
{{ include "isthmus.factsEnv" $ }}
{{- end }}
{{ include "isthmus.env" (list (print $p "CLUSTERSET_DOMAIN") $.Values.xds.clustersetDomain) }}
{{ include "isthmus.env" (list (print $p "LISTEN") (print ":" $.Values.xds.port)) }}
{{ include "isthmus.env" (list (print $p "CA_SECRET") (ternary (print $.Release.Namespace "/" $.Values.xds.caSecret) "" (ne $.Values.xds.caSecret ""))) }}
{{ include "isthmus.env" (list (print $p "CERT_TTL") $.Values.xds.certTTL) }}
{{ include "isthmus.env" (list (print $p "TLS") "always") }}
{{ include "isthmus.env" (list (print $p "SERVER_IDENTITY") (print $.Release.Namespace "/" (include "isthmus.serviceAccount" (list $ "xds")))) }}
{{ include "isthmus.env" (list (print $p "SERVER_NAMES") (include "isthmus.xdsHost" $)) }}
{{ include "isthmus.env" (list (print $p "GATEWAY_SERVICE_ACCOUNT") (print $.Release.Namespace "/isthmus-gateway")) }}
{{ include "isthmus.env" (list (print $p "GRPC_AUTH") $.Values.xds.grpcAuth) }}
{{- end -}}

{{/* xdsHost is the name clients dial the xDS server by, which its
serving certificate carries. */}}
{{- define "isthmus.xdsHost" -}}
isthmus-xds.{{ .Release.Namespace }}.svc
{{- end -}}

{{- define "isthmus.tunnelEnv" -}}
{{- $ := index . 0 -}}{{- $p := index . 1 -}}
- name: HOST_IP
  valueFrom:
    fieldRef: {fieldPath: status.hostIP}
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{ include "isthmus.env" (list (print $p "ENDPOINT") ($.Values.tunnel.endpoint | default (printf "$(HOST_IP):%v" $.Values.tunnel.listenPort))) }}
{{ include "isthmus.env" (list (print $p "LISTEN_PORT") $.Values.tunnel.listenPort) }}
{{ include "isthmus.env" (list (print $p "PROBE_PORT") $.Values.tunnel.probePort) }}
{{ include "isthmus.env" (list (print $p "DEVICE") $.Values.tunnel.device) }}
{{ include "isthmus.env" (list (print $p "WIREGUARD_IMPLEMENTATION") $.Values.tunnel.implementation) }}
{{ include "isthmus.env" (list (print $p "MTU") $.Values.tunnel.mtu) }}
{{ include "isthmus.env" (list (print $p "KEY_NAMESPACE") $.Release.Namespace) }}
{{ include "isthmus.env" (list (print $p "KEY_SECRET") "isthmus-tunnel-key") }}
{{ include "isthmus.env" (list (print $p "LEADER_ELECT") "true") }}
{{ include "isthmus.env" (list (print $p "LEADER_ELECT_IDENTITY") "$(POD_NAME)") }}
{{- end -}}

{{/* podSecurityContext of every pod but the tunnel's: no root. */}}
{{- define "isthmus.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "isthmus.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{/*
tunnelSecurityContext: the WireGuard device, its address and routes need
NET_ADMIN and nothing else. The process runs as root because Kubernetes
gives added capabilities to root only (a non-root process would hold
NET_ADMIN in its bounding set but not in its effective one); every other
capability is dropped, so this root cannot read others' files
(no DAC_OVERRIDE), change owners or load modules.
*/}}
{{- define "isthmus.tunnelSecurityContext" -}}
runAsUser: 0
runAsNonRoot: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
seccompProfile: {type: RuntimeDefault}
capabilities:
  drop: [ALL]
  add: [NET_ADMIN]
{{- end -}}

{{/* tunnelVolumes: /dev/net/tun for the userspace device, and a writable
directory for its UAPI socket (wgctrl's way to the device). */}}
{{- define "isthmus.tunnelVolumes" -}}
- name: dev-net-tun
  hostPath: {path: /dev/net/tun, type: CharDevice}
- name: wireguard-run
  emptyDir: {medium: Memory}
{{- end -}}

{{- define "isthmus.tunnelMounts" -}}
- name: dev-net-tun
  mountPath: /dev/net/tun
- name: wireguard-run
  mountPath: /var/run/wireguard
{{- end -}}

{{/* probes on a role's metrics port: liveness /healthz, readiness /readyz. */}}
{{- define "isthmus.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
  failureThreshold: 2
{{- end -}}

{{/* podCommon: what every pod spec shares. */}}
{{- define "isthmus.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* podMeta: labels and annotations of a role's pods; (list $ "agent"),
or (list $ "gateway" ANNOTATIONS) with annotations of its own. */}}
{{- define "isthmus.podMeta" -}}
{{- $ := index . 0 -}}
labels:
  {{- include "isthmus.selector" . | nindent 2 }}
  app.kubernetes.io/part-of: isthmus
  {{- with $.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $annotations := merge (dict) $.Values.podAnnotations }}
{{- if gt (len .) 2 }}{{ $annotations = merge (dict) (index . 2) $.Values.podAnnotations }}{{ end }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* scheduling: nodeSelector, tolerations and affinity from a values map. */}}
{{- define "isthmus.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
