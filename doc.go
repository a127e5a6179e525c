// Package umbra is the root of the Umbra module: the zero-trust overlay network for AI agents. The code lives
// in the packages below it; see README.md.
package umbra
