{{/* memberPrefix is how the broker's admission sees a member's identity. */}}
{{- define "isthmus-broker.memberPrefix" -}}
system:serviceaccount:{{ .Values.namespace }}:isthmus-member-
{{- end -}}
