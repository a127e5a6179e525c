# Convenience targets. `go run ./cmd/umbra demo` needs none of this; the containerised demo needs `make images`.

IMAGE ?= umbra-demo:latest
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: build images demo-up demo-logs demo-check demo-down test

build:
	go build -o bin/umbra ./cmd/umbra

# The image is FROM scratch with the static binary: nothing is pulled. The binary is built here, with the Go
# build cache; the build context is bin/image, which .dockerignore keeps to the binary and rootfs/.
images:
	mkdir -p bin/image/rootfs/data bin/image/rootfs/setup bin/image/rootfs/admin bin/image/rootfs/out bin/image/rootfs/secrets bin/image/rootfs/tmp
	chmod 700 bin/image/rootfs/*
	cp .dockerignore bin/image/.dockerignore
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/image/umbra ./cmd/umbra
	docker build -f Dockerfile -t $(IMAGE) bin/image

demo-up: images
	UMBRA_IMAGE=$(IMAGE) $(COMPOSE) up -d

demo-logs:
	$(COMPOSE) logs -f --no-color

demo-check:
	demo/check.sh

demo-down:
	$(COMPOSE) down -v

test:
	go test -count=1 -p 2 ./...
