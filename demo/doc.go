// Package demo is the multi-organisation demonstration, built only from the public constructors and agentsdk.
//
// Not built yet; `umbra dev` and the README's command sequence show the overlay today.
package demo
