{{/* memberPrefix is how the broker's admission sees a member's identity. */}}
{{- define "isthmus-broker.memberPrefix" -}}
system:serviceaccount:{{ .Values.namespace }}:isthmus-member-
{{- end -}}

{{/* tunnelPrefix is how the broker's admission sees a member's tunnel identity. */}}
{{- define "isthmus-broker.tunnelPrefix" -}}
system:serviceaccount:{{ .Values.namespace }}:isthmus-tunnel-
{{- end -}}
