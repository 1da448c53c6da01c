{{/*
gatewayBootstrap is Envoy's bootstrap: who it is (the xDS server gives a
node with role gateway of this cluster the gateway view), ADS over gRPC
(HTTP/2) to the isthmus-xds Service with the v3 resource API, a static
health listener answering /ready once the first configuration is in, and
the admin interface on 127.0.0.1 only.
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
      - envoy_grpc:
          cluster_name: isthmus-xds
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
  clusters:
    - name: isthmus-xds
      type: STRICT_DNS
      connect_timeout: 2s
      load_assignment:
        cluster_name: isthmus-xds
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address:
                      address: isthmus-xds.{{ .Release.Namespace }}.svc
                      port_value: {{ .Values.xds.port }}
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options:
              connection_keepalive:
                interval: 30s
                timeout: 10s
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
    cache {{ .Values.coredns.cache }}
    {{- end }}
    forward . {{ $ip }}:53
}
{{- end -}}
