# Isthmus. `make test` and `make demo` are the two commands (README.md);
# the rest are their parts. `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
GO ?= go
BIN := $(CURDIR)/bin
export GOBIN := $(BIN)

STATICCHECK_VERSION := v0.8.2
CONTROLLER_GEN_VERSION := v0.23.0
# code-generator follows the k8s.io modules in go.mod (keep them at one release).
CODE_GENERATOR_VERSION := v0.37.2
BROKER_API := github.com/isthmus-dev/isthmus/mcs/api/broker/v1alpha1
BROKER_GEN := mcs/api/broker/generated
HELM_VERSION := v3.22.0
# Debian packages the tests use (`make deps` installs the missing ones).
# nftables (nft) and conntrack are kube-proxy's in the demo's node namespaces.
# ca-certificates is what the image ships; openssl verifies the chains we issue.
# containerd, runc, the CNI plugins and socat run test/cluster's real nodes
# (installed without Recommends: containerd would pull criu); socat and
# netcat-openbsd also go into the images mcs-api's conformance suite runs.
DEBIAN_PACKAGES := git bind9-dnsutils iproute2 wireguard-tools tcpdump nftables conntrack iptables ca-certificates openssl \
	containerd runc containernetworking-plugins socat netcat-openbsd

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 20

.PHONY: build
build: ## build isthmus, isthmusctl (also as the kubectl plugin kubectl-isthmus) and isthmus-demo into bin/
	@# -buildvcs=true: stamp the commit's version even where GOFLAGS says false.
	$(GO) build -buildvcs=true -o $(BIN)/ ./cmd/... ./test/demo/cmd/isthmus-demo
	ln -sf isthmusctl $(BIN)/kubectl-isthmus
	printf '#!/bin/sh\n# kubectl completes `kubectl isthmus` through this (kubectl plugin completion)\nexec kubectl-isthmus __complete "$$@"\n' >$(BIN)/kubectl_complete-isthmus
	chmod +x $(BIN)/kubectl_complete-isthmus

.PHONY: demo
demo: demo-root deps tools helm build ## a local clusterset on real nodes, the charts installed from the tree, that resolves, routes over WireGuard and fails over (root; KEEP=1 keeps it up)
	ISTHMUS_TOOLS_DIR="$$(bash test/tools/build.sh)" $(BIN)/isthmus-demo up

.PHONY: demo-root
demo-root:
	@# Before anything slow: the demo runs real nodes (namespaces, mounts, cgroups).
	@[ "$$(id -u)" = 0 ] || { echo "make demo needs root: real nodes make network and mount namespaces, mounts and cgroups (run it as root)" >&2; exit 1; }

.PHONY: image
image: ## the isthmus image from the tree: one OCI index (linux/amd64, linux/arm64) as bin/isthmus-image.tar, for ctr, skopeo and crane
	@bash test/image/build.sh $(BIN)/isthmus-image.tar

.PHONY: release
release: helm ## bin/release/: isthmus and isthmusctl for linux/amd64 and linux/arm64, the image index, the two charts (helm package) and SHA256SUMS, reproducible from a commit
	@bash test/release/build.sh $(BIN)/release

.PHONY: conformance
conformance: setup ## mcs-api's conformance suite (MCS_CONFORMANCE_DIR) on fresh clustersets on real nodes with the chart, IPv4 and dual-stack (part of make test); reports in bin/conformance/ipv4/ and dual-stack/
	ISTHMUS_TOOLS_DIR="$$(bash test/tools/build.sh)" $(GO) test -count=1 -timeout 80m -run 'TestConformance(IPv4|DualStack)$$' -v ./test/conformance

.PHONY: conformance-against
conformance-against: ## the same suite against the members CONFORMANCE_CONTEXTS of a running clusterset in CONFORMANCE_KUBECONFIG; reports in bin/conformance/
	@MCS_CONFORMANCE_DIR="$${MCS_CONFORMANCE_DIR:-../shared/mcs-api-conformance}" bash test/conformance/run.sh

.PHONY: conformance-images
conformance-images: deps ## the images the conformance suite's pods run, from Debian's binaries, as bin/conformance/suite-images.tar (ctr -n k8s.io images import)
	cd test/image && $(GO) run . suite-images -out $(BIN)/conformance/suite-images.tar

.PHONY: deps
deps: ## install the Debian packages the tests need, when missing
	@missing=(); for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing+=($$p); done; \
	if [ $${#missing[@]} -gt 0 ]; then \
		echo "installing $${missing[*]}"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$${missing[@]}"; \
	fi

.PHONY: tools
tools: ## build the test Kubernetes binaries (kubelet too) once per machine, printing progress (first time: ~15 min)
	@bash test/tools/build.sh

.PHONY: helm
helm: ## build helm into bin/ for the chart tests, once (first time: ~5 min)
	@[ -x $(BIN)/helm ] || GOFLAGS=-mod=mod $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

.PHONY: setup
setup: ## what the tests need: Debian packages, the Kubernetes binaries and helm, side by side (their downloads overlap)
	@$(MAKE) --no-print-directory -j3 deps tools helm

.PHONY: test
test: setup ## set up everything, then run every test with the race detector (test/all.sh)
	GO=$(GO) bash test/all.sh

.PHONY: test-coredns-plugin
test-coredns-plugin: deps tools ## the CoreDNS plugin's own module (part of make test): builds a minimal CoreDNS, first time ~5 min
	cd dnsserver/coredns && ISTHMUS_TOOLS_DIR="$$(bash ../../test/tools/build.sh)" $(GO) test -race -count=1 -timeout 50m ./...

.PHONY: lint
lint: ## gofmt, go vet, staticcheck and generated files up to date
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	cd test/tools && $(GO) vet ./...
	cd test/image && $(GO) vet ./...
	cd dnsserver/coredns && $(GO) vet ./...
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@# code-generator's output is checked for staleness below, not linted:
	@# its informers call client-go APIs that client-go itself deprecates.
	$(BIN)/staticcheck $$($(GO) list ./... | grep -v /mcs/api/broker/generated/)
	$(MAKE) --no-print-directory generate
	@git diff --exit-code -- mcs/api || { echo "generated files are stale: run make generate and commit"; exit 1; }

.PHONY: generate
generate: ## regenerate deep-copies, CRD manifests and the broker's typed clientset, listers and informers from mcs/api
	$(GO) run sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION) \
		object paths=./mcs/api/... crd:crdVersions=v1 output:crd:dir=./mcs/api/crds
	@rm -rf $(BROKER_GEN) && hdr=$$(mktemp) && trap 'rm -f $$hdr' EXIT && \
	cg=k8s.io/code-generator/cmd; v=$(CODE_GENERATOR_VERSION); pkg=github.com/isthmus-dev/isthmus/$(BROKER_GEN); \
	GOFLAGS=-mod=mod $(GO) run $$cg/client-gen@$$v --go-header-file $$hdr --clientset-name versioned --input-base "" \
		--input $(BROKER_API) --output-dir $(BROKER_GEN)/clientset --output-pkg $$pkg/clientset && \
	GOFLAGS=-mod=mod $(GO) run $$cg/lister-gen@$$v --go-header-file $$hdr \
		--output-dir $(BROKER_GEN)/listers --output-pkg $$pkg/listers $(BROKER_API) && \
	GOFLAGS=-mod=mod $(GO) run $$cg/informer-gen@$$v --go-header-file $$hdr \
		--versioned-clientset-package $$pkg/clientset/versioned --listers-package $$pkg/listers \
		--output-dir $(BROKER_GEN)/informers --output-pkg $$pkg/informers $(BROKER_API)
