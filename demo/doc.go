// Package demo is the multi-organisation demonstration of Umbra, built only from the public constructors
// (controller.New, router.New, mcpgw.New, llmgw.New) and the agentsdk: no component has a code path for it.
//
// # The scenario
//
// Turbine A07 of Northwind's offshore wind farm raises a gearbox alarm. Northwind's planner agent assembles a
// repair brief with the agents of four other organisations: Helix, the turbine's maker (diagnostics from
// telemetry, spare parts), Meridian (marine weather) and two competing vessel operators, Tidewater and Keelson,
// who each work with Northwind but share no workgroup with each other. Five organisations, eight agents, six
// workgroups (five of them between organisations).
//
// On the way the network refuses, and records with its reason: a reservation beyond the parts desk's
// four-message contract (the session closes at its limit), a payment instruction over a charter contract that
// covers quotes and bookings only, a revised bid after the buyer's bidding window has expired, Tidewater's
// attempts to reach Keelson (discovery shows nothing; a proposal on Keelson's advertisement gets the same answer
// as one on an advertisement that never existed; its overlay service does not exist for Tidewater), a remote
// restart of the turbine that Northwind's MCP policy keeps for its own operators, a call to a tool whose
// definition changed mid-run (the MCP gateway quarantined it), and a model call over Meridian's daily budget at
// the LLM gateway.
//
// # Running it
//
// Run starts everything on this machine: a controller and a router in the process, a second router through
// Config.SecondRouter (another process: the overlay allows one router per process), the two gateways, the dark
// MCP servers (NewSCADAServer, NewMarineServer, and the sample server) and the sample model server, and every
// agent with its own enrolled identity. It writes a live Feed and returns a Summary tallied from the exported
// audit trail. `umbra demo` is the command.
//
// The containerised demo (docker-compose.yml) runs each workload in a container of its own: Setup plays the
// administrators, RunAgent one agent, ServeMCP and ServeModel the servers; the gateways run as `umbra mcpgw` and
// `umbra llmgw` with MCPGatewayYAML and LLMGatewayYAML.
package demo
