module github.com/umbra-mesh/umbra/internal/pki

go 1.26.8

require github.com/spiffe/go-spiffe/v2 v2.9.0
