// Package anomaly learns, from the audit trail, how each identity usually behaves and tells when it deviates:
// a rate far above its usual one, a run of refusals, a peer, message type, tool or model it never used. It does
// no I/O: the controller feeds it the records it reads from its own audit trail, in order, and acts on the alerts
// it returns (an audit record, a NATS message, a webhook, and a suspension where the policy asks for one). Tests
// feed it scripted record streams.
//
// What an identity does is read from the records it is the actor of:
//   - its rate is the number of such records within the last window (Config.Window; the current window's count
//     plus the previous one's, weighted by the part of it still within), outcomes of calls not counted twice;
//   - its refusals are those records with the decision "deny" (an envelope.rejected.summary counts as the
//     refusals it summarises);
//   - its peers and message types come from the envelopes it sent (envelope.accepted), its tools from the MCP
//     gateway's calls (mcp.call, mcp.prompt, mcp.read) and its models from the LLM gateway's (llm.call).
//
// Its baseline is a moving average of its rate and refusals per window (the first windows weigh alike, then the
// average follows the last twenty or so), and the sets of peers, types, tools and models it used. For
// Config.Learn after its first record, and for its first Config.LearnRecords records, an identity is learning: it raises no rate or novelty alert, only
// refusal alerts and the automatic suspension, which need no baseline. Time is the records' own, so a replay of
// the trail gives the same answers as the live stream did.
package anomaly
