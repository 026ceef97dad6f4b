#!/bin/sh
# Container entry point of the loopgate DaemonSet (host network namespace).
#  1. applies the policy mounted from the ConfigMap (a grant on an interface that does
#     not exist yet, such as cni0 before the first pod, is pending: watch serves it
#     when the interface appears);
#  2. exports `loopgate audit --format prometheus` to node_exporter's textfile collector
#     every $LOOPGATE_AUDIT_INTERVAL seconds, if $LOOPGATE_TEXTFILE_DIR is set;
#  3. runs `loopgate watch --policy` in the foreground, following the ConfigMap;
#     SIGTERM stops it and leaves the policy.
set -eu
: "${LOOPGATE_POLICY_DIR:=/etc/loopgate}"
: "${LOOPGATE_AUDIT_INTERVAL:=30}"
LOOPGATE=${LOOPGATE:-loopgate}

$LOOPGATE apply "$LOOPGATE_POLICY_DIR"

if [ -n "${LOOPGATE_TEXTFILE_DIR:-}" ]; then
  (
    while :; do
      # audit exits 1 when it has findings; the metrics are written either way.
      $LOOPGATE audit --format prometheus > "$LOOPGATE_TEXTFILE_DIR/.loopgate.prom.tmp" || true
      mv "$LOOPGATE_TEXTFILE_DIR/.loopgate.prom.tmp" "$LOOPGATE_TEXTFILE_DIR/loopgate.prom"
      sleep "$LOOPGATE_AUDIT_INTERVAL"
    done
  ) &
  exporter=$!
  trap 'kill "$exporter" 2>/dev/null; kill -TERM "$watch" 2>/dev/null' TERM INT
fi

$LOOPGATE watch --policy "$LOOPGATE_POLICY_DIR" &
watch=$!
trap 'kill -TERM "$watch" 2>/dev/null; [ -n "${exporter:-}" ] && kill "$exporter" 2>/dev/null' TERM INT
wait "$watch" || true
# wait returns early when a trapped signal arrives; wait again for watch to finish.
wait "$watch" 2>/dev/null || true
