#!/usr/bin/env bash
# Checks a running containerised demo (docker-compose.yml): every workload container is dark (no listening
# socket), an agent cannot reach another organisation's agent by IP, every container runs as a non-root user and
# holds no key material but its own, and the audit chain verifies.
# Run from the repository root after `docker-compose up -d` and once the round is complete (the planner's log
# ends with its brief). TestDemoCompose in cmd/umbra/demo_test.go checks the same and more, automatically.
# COMPOSE_PROJECT_NAME and COMPOSE_FILE select another deployment of the file, as for compose itself.
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
fail=0

# Each workload's own identity: organisation/kind/name of its SPIFFE ID.
declare -A own=(
  [northwind-planner]=northwind/agent/planner [northwind-safety]=northwind/agent/safety
  [northwind-procurement]=northwind/agent/procurement [helix-diagnostics]=helix/agent/diagnostics
  [helix-parts]=helix/agent/parts [meridian-forecaster]=meridian/agent/forecaster
  [tidewater-dispatch]=tidewater/agent/dispatch [keelson-dispatch]=keelson/agent/dispatch
  [mcpgw]=northwind/gateway/mcpgw [llmgw]=northwind/gateway/llmgw [model]=northwind/llm/small
  [scada]=northwind/mcp/scada [textkit]=northwind/mcp/textkit [marine]=meridian/mcp/marine
)
workloads=(northwind-planner northwind-safety northwind-procurement helix-diagnostics helix-parts meridian-forecaster
  tidewater-dispatch keelson-dispatch mcpgw llmgw model scada textkit marine)

container() { "${compose[@]}" ps -a -q "$1"; }

# b64url decodes unpadded base64url.
b64url() {
  local s
  s=$(printf '%s' "$1" | tr '_-' '/+')
  while [ $(( ${#s} % 4 )) -ne 0 ]; do s="$s="; done
  printf '%s' "$s" | base64 -d 2>/dev/null || true
}

# inventory prints one line per file holding key material in a container, volumes included:
# PATH KIND OWNER, where KIND is identity (OWNER: org/kind/name of its SPIFFE ID), token (a workload's enrollment
# token, OWNER likewise), router-token (OWNER: the router's name) or key (a bare private key, OWNER: -).
inventory() {
  local dir f text
  dir=$(mktemp -d)
  docker cp "$1":/ - 2>/dev/null | tar -x -C "$dir" --exclude=umbra 2>/dev/null || true
  while IFS= read -r f; do
    text=$(cat "$dir/$f")
    if [[ $text =~ \"spiffe_id\":\ *\"spiffe://[^/]*/([^\"]*)\" ]]; then
      echo "/${f#./} identity ${BASH_REMATCH[1]}"
    elif [[ $text =~ (^|[^A-Za-z0-9])uet1\.([A-Za-z0-9_-]+)\. ]]; then
      [[ $(b64url "${BASH_REMATCH[2]}") =~ \"sub\":\"spiffe://[^/]*/([^\"]*)\" ]] &&
        echo "/${f#./} token ${BASH_REMATCH[1]}" || echo "/${f#./} token ?"
    elif [[ $text =~ urt1\.([A-Za-z0-9_-]+) ]]; then
      [[ $(b64url "${BASH_REMATCH[1]}") =~ \"name\":\"([^\"]*)\" ]] &&
        echo "/${f#./} router-token ${BASH_REMATCH[1]}" || echo "/${f#./} router-token ?"
    elif [[ $text =~ eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\. ]]; then
      echo "/${f#./} jwt ?"
    else
      echo "/${f#./} key -"
    fi
  done < <(cd "$dir" && grep -rlE 'PRIVATE KEY|uet1\.|urt1\.|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.' . | sort)
  rm -rf "$dir"
}

# allowed says whether service $1 may hold item "$2 $3 $4" (path, kind, owner).
allowed() {
  local svc=$1 path=$2 kind=$3 owner=$4
  case $svc in
    controller) return 0 ;; # the authority: its CAs, the administrator, router1's token
    router1 | router2) [[ $kind = key && $path = /data/* || $kind = router-token && $owner = r${svc#router} ]] ;;
    setup) [[ $kind = identity && $owner = */admin/* || $kind = token || $kind = router-token ]] ;;
    *) [[ ($kind = identity || $kind = token) && $owner = "${own[$svc]}" ]] ;;
  esac
}

echo "== key material each container holds (want only its own) and the user it runs as (want non-root)"
for svc in controller router1 router2 setup "${workloads[@]}"; do
  id=$(container "$svc")
  if [ -z "$id" ]; then
    printf '  %-22s no container\n' "$svc"; fail=1; continue
  fi
  # The image's user, and the uid of every process the container runs (none once it has exited).
  user=$(docker inspect -f '{{.Config.User}}' "$id")
  uids=$(docker top "$id" -eo uid,pid 2>/dev/null | awk 'NR > 1 { print $1 }' | sort -u | paste -sd, || true)
  verdict=""
  if [[ -z $user || $user = 0 || $user = 0:* || $user = root* || ,$uids, = *,0,* ]]; then verdict="   RUNS AS ROOT"; fail=1; fi
  printf '  %-22s user %s, processes: uid %s%s\n' "$svc" "$user" "${uids:-none (exited)}" "$verdict"
  items=$(inventory "$id")
  holds_own=0
  while read -r path kind owner; do
    [ -n "$path" ] || continue
    mark=""
    if ! allowed "$svc" "$path" "$kind" "$owner"; then mark="   NOT ITS OWN"; fail=1; fi
    [[ -n ${own[$svc]:-} && $kind = identity && $owner = "${own[$svc]}" ]] && holds_own=1
    printf '  %-22s   %-36s %-12s %s%s\n' "" "$path" "$kind" "$owner" "$mark"
  done <<<"$items"
  if [[ -n ${own[$svc]:-} && $holds_own = 0 ]]; then
    printf '  %-22s   its own identity is missing: the listing saw nothing\n' ""; fail=1
  fi
done

echo "== listening sockets held by each workload container's processes (want 0)"
for svc in "${workloads[@]}"; do
  last=$("${compose[@]}" exec -T "$svc" /umbra demo sockets | tail -n 1)
  printf '  %-22s %s\n' "$svc" "$last"
  [ "$last" = "0 listening sockets" ] || fail=1
done
printf '  %-22s %s (the controller listens, so the check sees sockets)\n' controller \
  "$("${compose[@]}" exec -T controller /umbra demo sockets | tail -n 1)"

echo "== northwind-planner probing keelson-dispatch directly (want unreachable)"
ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(container keelson-dispatch)")
if "${compose[@]}" exec -T northwind-planner /umbra demo probe --timeout 2s "$ip:3022" "$ip:80"; then fail=1; fi

echo "== audit chain"
"${compose[@]}" exec -T controller /umbra audit verify --as /data/admin.json || fail=1

if [ "$fail" = 0 ]; then echo "all checks passed"; else echo "CHECKS FAILED"; fi
exit "$fail"
