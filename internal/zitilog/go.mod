module github.com/umbra-mesh/umbra/internal/zitilog

go 1.26.8

require github.com/sirupsen/logrus v1.9.3

require golang.org/x/sys v0.0.0-20220715151400-c0bba94af5f8 // indirect
