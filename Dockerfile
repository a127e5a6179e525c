# The Umbra image: the static umbra binary and nothing else. Nothing to pull: build the binary first and use the
# directory holding it as the build context (`make images` does both):
#   CGO_ENABLED=0 go build -trimpath -o bin/image/umbra ./cmd/umbra
#   docker build -f Dockerfile -t umbra-demo:latest bin/image
FROM scratch
COPY umbra /umbra
# WORKDIR creates the directories: a scratch image has none.
WORKDIR /tmp
WORKDIR /data
ENV TMPDIR=/tmp
ENTRYPOINT ["/umbra"]
