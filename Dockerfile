# The Umbra image: the static umbra binary, the empty directories it writes, and nothing else. Nothing to pull:
# build the binary first and use the directory holding it as the build context (`make images` does both):
#   CGO_ENABLED=0 go build -trimpath -o bin/image/umbra ./cmd/umbra
#   mkdir -p bin/image/rootfs/data bin/image/rootfs/setup bin/image/rootfs/admin bin/image/rootfs/out bin/image/rootfs/secrets bin/image/rootfs/tmp
#   chmod 700 bin/image/rootfs/*
#   docker build -f Dockerfile -t umbra-demo:latest bin/image
FROM scratch
COPY umbra /umbra
# The process runs as 65532:65532, not root, and owns its directories: a named volume mounted on one of them
# starts out with the image directory's owner and mode. A scratch image has no RUN to make them: they come
# from the build context.
COPY --chown=65532:65532 rootfs/ /
USER 65532:65532
WORKDIR /data
ENV TMPDIR=/tmp
ENTRYPOINT ["/umbra"]
