#!/usr/bin/env bash
# Reduce D-Bus introspection XML (on stdin, any number of documents) to one
# sorted line per member of the io.ferry.Helper1.* interfaces:
#   IFACE method NAME in(SIGS) out(SIGS)
#   IFACE property NAME TYPE ACCESS
#   IFACE signal NAME (SIGS)
# Comments, annotations, argument names and order of members do not count:
# two helpers that answer the same calls compare equal.
set -euo pipefail
awk '
  function attr(line, key,    re) {
    re = key "=\"[^\"]*\""
    if (!match(line, re)) return ""
    return substr(line, RSTART + length(key) + 2, RLENGTH - length(key) - 3)
  }
  function flush() {
    if (member == "") return
    sub(/,$/, "", ins); sub(/,$/, "", outs)
    if (kind == "method") print iface " method " member " in(" ins ") out(" outs ")"
    else print iface " signal " member " (" outs ")"
    member = ""
  }
  /<interface / { iface = attr($0, "name"); keep = (iface ~ /^io\.ferry\.Helper1\./) }
  /<\/interface>/ { flush(); keep = 0 }
  !keep { next }
  /<method / || /<signal / {
    flush(); kind = ($0 ~ /<method /) ? "method" : "signal"
    member = attr($0, "name"); ins = ""; outs = ""
    if ($0 ~ /\/>/) flush()
  }
  /<\/method>/ || /<\/signal>/ { flush() }
  /<arg / && member != "" {
    if (attr($0, "direction") == "in") ins = ins attr($0, "type") ","
    else outs = outs attr($0, "type") ","
  }
  /<property / { print iface " property " attr($0, "name") " " attr($0, "type") " " attr($0, "access") }
' | sort -u
