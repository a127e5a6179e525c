package main

import "github.com/umbra-mesh/umbra/workgroups"

// pricingWG is the inter-org workgroup the end-to-end tests build: acme's, with globex invited.
func pricingWG() workgroups.WorkgroupID { return workgroups.WorkgroupID{Org: "acme", Name: "pricing"} }
