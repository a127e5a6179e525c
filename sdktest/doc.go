// Package sdktest runs the agent SDK against a real controller and routers started in the test process
// (controllertest): connections, sessions, governance, revocation, rotation, failover and the attacks on them.
//
// The tests live here, in the root module, and not beside the SDK: the SDK is a module of its own that third
// parties require, and `go mod tidy` in their module loads the tests of the packages they import. Tests of
// package agentsdk that imported the controller would put the controller's module graph into every agent's.
package sdktest
