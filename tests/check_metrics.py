#!/usr/bin/env python3
"""Parses OpenMetrics text on stdin with the Prometheus project's own Python parser (strict:
it raises on anything the format forbids) and prints every sample as one JSON line:
{"name": ..., "labels": {...}, "value": ..., "type": ...}. guard's tests compare them with
the reports they come from."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({"name": sample.name, "labels": sample.labels,
                          "value": sample.value, "type": family.type}))
