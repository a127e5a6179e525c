#!/usr/bin/env bash
# Checks a running containerised demo (docker-compose.yml): every workload container is dark (no listening
# socket), an agent cannot reach another organisation's agent by IP, and the audit chain verifies.
# Run from the repository root after `docker-compose up -d` and once the round is complete (the planner's log
# ends with its brief). TestDemoCompose in cmd/umbra/demo_test.go checks the same and more, automatically.
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
fail=0

echo "== listening sockets held by each workload container's processes (want 0)"
for svc in northwind-planner northwind-safety northwind-procurement helix-diagnostics helix-parts meridian-forecaster \
  tidewater-dispatch keelson-dispatch mcpgw llmgw model scada textkit marine; do
  last=$("${compose[@]}" exec -T "$svc" /umbra demo sockets | tail -n 1)
  printf '  %-22s %s\n' "$svc" "$last"
  [ "$last" = "0 listening sockets" ] || fail=1
done
printf '  %-22s %s (the controller listens, so the check sees sockets)\n' controller \
  "$("${compose[@]}" exec -T controller /umbra demo sockets | tail -n 1)"

echo "== northwind-planner probing keelson-dispatch directly (want unreachable)"
ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$("${compose[@]}" ps -q keelson-dispatch)")
if "${compose[@]}" exec -T northwind-planner /umbra demo probe --timeout 2s "$ip:3022" "$ip:80"; then fail=1; fi

echo "== audit chain"
"${compose[@]}" exec -T controller /umbra audit verify --as /data/admin.json || fail=1

if [ "$fail" = 0 ]; then echo "all checks passed"; else echo "CHECKS FAILED"; fi
exit "$fail"
