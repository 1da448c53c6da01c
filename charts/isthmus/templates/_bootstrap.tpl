{{/*
gatewayBootstrap is Envoy's bootstrap: who it is (the xDS server gives a
node with role gateway of this cluster the gateway view), ADS with the v3
resource API to the isthmus-xds Service over TLS (the server's certificate
verified against the clusterset's trust bundle for the Service's name),
authenticated by the gateway's projected ServiceAccount token, a static
health listener answering /ready once the first configuration is in, and
the admin interface on 127.0.0.1 only.

ADS goes through Envoy's Google gRPC client, not envoy_grpc: only it takes
call credentials, and file_based_metadata reads the token file on every
new stream, so the kubelet's rotation of the token reaches the server.
*/}}
{{- define "isthmus.gatewayBootstrap" -}}
node:
  id: isthmus-gateway
  cluster: isthmus-gateway
  metadata:
    isthmus.dev/role: gateway
    isthmus.dev/cluster: {{ .Values.clusterID }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
      - google_grpc:
          target_uri: {{ include "isthmus.xdsHost" . }}:{{ .Values.xds.port }}
          stat_prefix: isthmus_xds
          channel_credentials:
            ssl_credentials:
              root_certs:
                filename: /etc/isthmus/trust/ca.crt
          credentials_factory_name: envoy.grpc_credentials.file_based_metadata
          call_credentials:
            - from_plugin:
                name: envoy.grpc_credentials.file_based_metadata
                typed_config:
                  "@type": type.googleapis.com/envoy.config.grpc_credential.v3.FileBasedMetadataConfig
                  secret_data:
                    filename: /var/run/secrets/isthmus/xds/token
                  header_key: authorization
                  header_prefix: "Bearer "
          # The server's keepalive policy (xds/server): pings every 30 s.
          channel_args:
            args:
              grpc.keepalive_time_ms: {int_value: 30000}
              grpc.keepalive_timeout_ms: {int_value: 10000}
  # No initial fetch timeout: Envoy starts its listeners (the health one
  # too) only once the xDS server has given it clusters and listeners, so
  # a gateway that cannot reach it never turns ready.
  cds_config:
    ads: {}
    resource_api_version: V3
    initial_fetch_timeout: 0s
  lds_config:
    ads: {}
    resource_api_version: V3
    initial_fetch_timeout: 0s
static_resources:
  listeners:
    - name: isthmus-health
      address:
        socket_address:
          address: 0.0.0.0
          port_value: {{ .Values.gateway.healthPort }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: health
                route_config:
                  name: health
                  virtual_hosts:
                    - name: health
                      domains: ["*"]
                      routes:
                        - match:
                            path: /ready
                          direct_response:
                            status: 200
                            body:
                              inline_string: "ready\n"
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
admin:
  address:
    socket_address:
      address: 127.0.0.1
      port_value: {{ .Values.gateway.adminPort }}
{{- end -}}

{{/*
corednsStub is the server block that sends the clusterset zone (and the
per-cluster zone, when on) to the isthmus-dns Service. forward needs an
address: dns.clusterIP when fixed, else the Service's address when it
exists already (an upgrade), else the placeholder ISTHMUS_DNS_CLUSTER_IP,
which NOTES.txt tells how to fill in.
*/}}
{{- define "isthmus.corednsStub" -}}
{{- $ip := .Values.dns.clusterIP -}}
{{- if not $ip -}}
{{- $svc := lookup "v1" "Service" .Release.Namespace "isthmus-dns" -}}
{{- $ip = dig "spec" "clusterIP" "ISTHMUS_DNS_CLUSTER_IP" $svc -}}
{{- end -}}
{{ .Values.dns.zone }}:53{{ with .Values.dns.clusterZone }} {{ . }}:53{{ end }} {
    errors
    {{- if gt (int .Values.coredns.cache) 0 }}
    cache {{ .Values.coredns.cache }} {
        # An answer stays for up to a minute while isthmus dns restarts
        # (a rolling update), refreshed as soon as it answers again.
        serve_stale 60s
    }
    {{- end }}
    forward . {{ $ip }}:53
}
{{- end -}}
