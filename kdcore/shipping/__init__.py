"""What a finished run ships beside its weights, for any task: report.json, curves,
TensorBoard events, latency, the readiness gate, the KD gain."""
